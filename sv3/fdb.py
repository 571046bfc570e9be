"""The master's MAC table (forwarding database): learning, moves, ageing.

Owned and written by the master only.  Workers report (MAC, port) pairs;
the table answers whether the forwarding view changed, in which case the
master publishes a new snapshot (sv3.shm.snapshot).  Refreshes of an
existing entry only move its timestamp and publish nothing."""
import collections
import time

DEFAULT_AGE = 300.0      # IEEE 802.1D default ageing time, seconds
DEFAULT_MAX = 8192
DEFAULT_MAX_PER_PORT = 1024


def fmt_mac(mac):
    return ":".join("%02x" % b for b in mac)


class MacTable:
    def __init__(self, age=DEFAULT_AGE, max_entries=DEFAULT_MAX,
                 max_per_port=DEFAULT_MAX_PER_PORT, clock=time.monotonic):
        self.age = age
        self.max_entries = max_entries
        self.max_per_port = max_per_port
        self.per_port = collections.Counter()
        self.clock = clock
        self.entries = {}        # mac bytes -> [port_id, last_seen]
        self.gen = 0
        self.stats = {"learned": 0, "moved": 0, "aged": 0, "flushed": 0, "refused": 0}

    def learn(self, mac, port_id):
        """Returns True when the forwarding view changed."""
        if mac[0] & 1:
            return False         # never learn a multicast source
        now = self.clock()
        e = self.entries.get(mac)
        if e is not None:
            e[1] = now
            if e[0] == port_id:
                return False
            if self.per_port[port_id] >= self.max_per_port:
                return self._refuse()
            self.per_port[e[0]] -= 1
            self.per_port[port_id] += 1
            e[0] = port_id
            self.stats["moved"] += 1
            return self._bump()
        if len(self.entries) >= self.max_entries or self.per_port[port_id] >= self.max_per_port:
            return self._refuse()
        self.entries[mac] = [port_id, now]
        self.per_port[port_id] += 1
        self.stats["learned"] += 1
        return self._bump()

    def expire(self):
        now = self.clock()
        old = [m for m, (_, seen) in self.entries.items() if now - seen > self.age]
        for m in old:
            self.per_port[self.entries.pop(m)[0]] -= 1
        self.stats["aged"] += len(old)
        return self._bump() if old else False

    def flush_port(self, port_id):
        gone = [m for m, (p, _) in self.entries.items() if p == port_id]
        for m in gone:
            del self.entries[m]
        self.per_port.pop(port_id, None)
        self.stats["flushed"] += len(gone)
        return self._bump() if gone else False

    def macs_of(self, port_id):
        return [m for m, (p, _) in self.entries.items() if p == port_id]

    def view(self):
        """{mac: port_id} for a snapshot."""
        return {m: p for m, (p, _) in self.entries.items()}

    def rows(self):
        now = self.clock()
        return [{"mac": fmt_mac(m), "port": p, "age": round(now - seen, 1)}
                for m, (p, seen) in sorted(self.entries.items(), key=lambda kv: (kv[1][0], kv[0]))]

    def _refuse(self):
        self.stats["refused"] += 1
        return False

    def _bump(self):
        self.gen += 1
        return True
