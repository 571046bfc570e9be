/* fdb.c - the worker's copy of the MAC table and the forwarding decision.
 *
 * The master owns the table; a worker rebuilds this open-addressing hash
 * from each msgpack snapshot (sv3/shm/snapshot.py) between breaths.  The
 * forwarding decision also learns: a unicast source MAC that the snapshot
 * does not map to this port is put on the port's learn list for Python to
 * report.  The last source is remembered (VALE's trick) so a busy MAC costs
 * one compare, and the entry's hit flag makes an active MAC be re-reported
 * once per hit-clearing period, which keeps it from ageing out.
 */
#include "sv3_impl.h"

static inline uint32_t fdb_hash(uint64_t mac, uint32_t mask)
{
    return (uint32_t)((mac * 0x9E3779B97F4A7C15ull) >> 40) & mask;
}

/* packed: n records of 6 MAC bytes + u16 port id (little endian).
 * tab has mask+1 slots, mask+1 >= 2n.  Returns the entries stored. */
uint32_t sv3_fdb_load(struct sv3_fdb_entry *tab, uint32_t mask, const uint8_t *packed, uint32_t n)
{
    uint32_t i, stored = 0;
    memset(tab, 0, sizeof(*tab) * ((uint64_t)mask + 1));
    if ((uint64_t)n * 2 > (uint64_t)mask + 1)
        return 0;
    for (i = 0; i < n; i++, packed += 8) {
        uint64_t mac = sv3_mac48(packed);
        uint32_t h = fdb_hash(mac, mask);
        if (mac == 0)
            continue;
        while (tab[h].mac != 0 && tab[h].mac != mac)
            h = (h + 1) & mask;
        if (tab[h].mac == 0)
            stored++;
        tab[h].mac = mac;
        tab[h].port_id = (uint16_t)(packed[6] | packed[7] << 8);
    }
    return stored;
}

static struct sv3_fdb_entry *fdb_find(const struct sv3_fdb_entry *tab, uint32_t mask, uint64_t mac)
{
    uint32_t h = fdb_hash(mac, mask), probes;
    if (!tab)
        return NULL;
    for (probes = 0; probes <= mask; probes++) {
        if (tab[h].mac == mac)
            return (struct sv3_fdb_entry *)&tab[h];
        if (tab[h].mac == 0)
            return NULL;
        h = (h + 1) & mask;
    }
    return NULL;
}

int sv3_fdb_lookup(const struct sv3_fdb_entry *tab, uint32_t mask, const uint8_t *mac)
{
    struct sv3_fdb_entry *e = fdb_find(tab, mask, sv3_mac48(mac));
    return e ? e->port_id : -1;
}

void sv3_fdb_clear_hits(struct sv3_port *p)
{
    uint32_t i;
    if (!p->fdb)
        return;
    for (i = 0; i <= p->fdb_mask; i++)
        p->fdb[i].hit = 0;
    p->last_src = 0;
}

static void learn(struct sv3_port *p, const uint8_t *src)
{
    uint64_t mac = sv3_mac48(src);
    struct sv3_fdb_entry *e;
    uint32_t i;

    if (mac == p->last_src || mac == 0)    /* 0 marks an empty fdb slot */
        return;
    p->last_src = mac;
    e = fdb_find(p->fdb, p->fdb_mask, mac);
    if (e && e->port_id == p->port_id) {
        if (e->hit)
            return;
        e->hit = 1;          /* refresh: report once per clearing period */
    }
    for (i = 0; i < p->nlearn; i++)
        if (p->learn[i] == mac)
            return;
    if (p->nlearn < SV3_LEARN_MAX) {
        p->learn[p->nlearn++] = mac;
        p->ctr->learn_reports++;
    }
}

/* Decide where a frame from this port goes; learns its source.
 * Returns SV3_FWD_DROP, SV3_FWD_FLOOD, or the index into p->out. */
int sv3_forward_decision(struct sv3_port *p, const uint8_t *eth, uint32_t len, uint16_t *dst_out)
{
    struct sv3_fdb_entry *e;
    uint32_t i;

    if (len < 14)
        return SV3_FWD_DROP;
    if (!(eth[6] & 1))
        learn(p, eth + 6);
    if (eth[0] & 1)                  /* I/G bit: multicast and broadcast */
        return SV3_FWD_FLOOD;
    e = fdb_find(p->fdb, p->fdb_mask, sv3_mac48(eth));
    if (!e)
        return SV3_FWD_FLOOD;
    if (e->port_id == p->port_id) {
        p->ctr->drop_hairpin++;
        return SV3_FWD_DROP;
    }
    for (i = 0; i < p->npeers; i++)
        if (p->out[i].port_id == e->port_id) {
            if (dst_out)
                *dst_out = e->port_id;
            return (int)i;
        }
    return SV3_FWD_FLOOD;            /* snapshot ahead of the peer list */
}
