"""nodeagent.capabilities: what the agent's start-up check asks for, and its message."""
from nodeagent.capabilities import (CAP_BPF, CAP_NET_ADMIN, CAP_NET_RAW, CAP_PERFMON, CAP_SYS_ADMIN, missing,
                                    parse_cap_eff, refusal)


def mask(*caps: int) -> int:
    return sum(1 << c for c in caps)


def test_root_with_every_capability_misses_nothing():
    assert missing(parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n")) == []


def test_sys_admin_stands_in_for_bpf_and_perfmon_as_the_kernel_does():
    assert missing(mask(CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN)) == []
    assert [n.name for n in missing(mask(CAP_NET_ADMIN, CAP_NET_RAW, CAP_BPF, CAP_PERFMON))] == ["CAP_SYS_ADMIN"]


def test_the_refusal_names_each_missing_capability_its_use_and_the_chart_setting():
    text = refusal(missing(mask(CAP_NET_RAW, CAP_SYS_ADMIN)))
    assert "missing capability CAP_NET_ADMIN: needed to attach the XDP/TC programs" in text
    assert "NET_ADMIN (the chart's agent.securityContext.capabilities.add)" in text
    assert text.endswith("Nothing was changed on this node.")
