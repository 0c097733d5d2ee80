"""Python mirror of bpf/vipfarm_consts.h (tests/unit/test_bpf_consts.py keeps them equal)."""
from __future__ import annotations

MAX_FARMS = 32
MAX_VIPS_PER_IFACE = 256
MAX_RULES = 8
MAX_BUCKETS = 65536
TABLE_WORDS = MAX_BUCKETS // 64
GLOBAL_SLOT = MAX_FARMS
MAX_UDP_FLOWS = 65536

CNT_ACCEPTED = 0
CNT_DROPPED = 1
CNT_NEIGH_REPLIED = 2
CNT_NEIGH_PUNTED = 3
CNT_MALFORMED = 4
CNT_PASSED = 5
CNT_LEASE_EXPIRED = 6
CNT_LEASE_LAPSED = 7
CNT_HANDOVER_KEPT = 8
CNT_HANDOVER_UNKNOWN_DROPPED = 9
CNT_UDP_KEPT = 10
CNT_UDP_ELSEWHERE = 11
CNT_UDP_HELD = 12
NCOUNTERS = 13
COUNTER_NAMES = ("accepted", "dropped", "neigh_replied", "neigh_punted", "malformed", "passed",
                 "lease_expired", "lease_lapsed", "handover_kept", "handover_unknown_dropped",
                 "udp_kept", "udp_elsewhere", "udp_held")

TCP_SYN = 0x02
TCP_ACK = 0x10

AFF_CLIENTIP = 0
AFF_CLIENTIPPORT = 1
FAMILY_V4 = 4
FAMILY_V6 = 6
MAX_EXT_HDRS = 4
MAX_EXT_OFFSET = 256
NA_FRAME_LEN = 86

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX = 0, 1, 2, 3
