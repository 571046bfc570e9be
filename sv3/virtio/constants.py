"""virtio-net feature bits (virtio 1.1 section 5.1.3) and header sizes."""
NET_F_CSUM = 0
NET_F_GUEST_CSUM = 1
NET_F_MTU = 3
NET_F_MAC = 5
NET_F_GUEST_TSO4 = 7
NET_F_GUEST_TSO6 = 8
NET_F_GUEST_ECN = 9
NET_F_HOST_TSO4 = 11
NET_F_HOST_TSO6 = 12
NET_F_HOST_ECN = 13
NET_F_MRG_RXBUF = 15
NET_F_STATUS = 16
NET_F_CTRL_VQ = 17
NET_F_MQ = 22
F_ANY_LAYOUT = 27
RING_F_INDIRECT_DESC = 28
RING_F_EVENT_IDX = 29
F_VERSION_1 = 32

NET_HDR_LEN = 12         # with VERSION_1 or MRG_RXBUF
NET_HDR_LEN_LEGACY = 10  # neither


def bit(n):
    return 1 << n


def net_hdr_len(features):
    """virtio 1.1 5.1.6: num_buffers exists with VERSION_1 or MRG_RXBUF."""
    if features & (bit(F_VERSION_1) | bit(NET_F_MRG_RXBUF)):
        return NET_HDR_LEN
    return NET_HDR_LEN_LEGACY


# Offload features and what they let sv3 take from / give to the device
# (SV3_ACCEPT_* bits of sv3/_native/sv3.h: CSUM 1, TSO4 2, TSO6 4, ECN 8).
HOST_OFFLOADS = ((NET_F_CSUM, 1), (NET_F_HOST_TSO4, 2), (NET_F_HOST_TSO6, 4), (NET_F_HOST_ECN, 8))
GUEST_OFFLOADS = ((NET_F_GUEST_CSUM, 1), (NET_F_GUEST_TSO4, 2), (NET_F_GUEST_TSO6, 4), (NET_F_GUEST_ECN, 8))


def offloads(features, table):
    """SV3_ACCEPT_* bits of the negotiated features in table."""
    return sum(acc for feature, acc in table if features & bit(feature))
