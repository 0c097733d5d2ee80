"""The agent's Prometheus metric families, built from one AgentInput (vipfarm/agent_status.py)
at scrape time: no global mutable metric objects, nothing counted twice. observe.py's
Collector calls metric_families() for each scrape; README "Metrics and health endpoints"
lists every family.

Heartbeat round-trip time: the signed wire format (vipfarm/heartbeat_wire.py) echoes a
peer's boot id, not a send time, so no RTT can be measured without changing it. The agent
exports vipfarm_heartbeat_gap_seconds{farm,peer} instead: the time since that peer's last
accepted heartbeat (about one interval while it is healthy, growing while it is lost).
"""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from vipfarm.checks import RECOVERY_BUDGET_EXHAUSTED
from vipfarm.agent_status import AgentInput, farm_not_ready, rejected_by_reason
from vipfarm.farm_timeline import cumulative_buckets

from .bpf_consts import COUNTER_NAMES

NEIGHBOUR_COUNTERS = ("neigh_replied", "neigh_punted")
PACKET_VERDICTS = tuple(n for n in COUNTER_NAMES if n not in NEIGHBOUR_COUNTERS)


def metric_families(a: AgentInput) -> list:
    packets = CounterMetricFamily("vipfarm_packets", "Packets to a farm's VIPs by the filter's verdict",
                                  labels=["farm", "iface", "verdict"])
    neighbour = CounterMetricFamily("vipfarm_neighbour_replies", "ARP replies and IPv6 neighbour advertisements "
                                    "for a VIP sent by the filter", labels=["farm", "iface"])
    malformed = CounterMetricFamily("vipfarm_malformed_frames", "Frames the filter could not parse",
                                    labels=["farm", "iface"])
    owned = GaugeMetricFamily("vipfarm_buckets_owned", "Buckets this node's filter accepts now", labels=["farm"])
    buckets = GaugeMetricFamily("vipfarm_buckets", "The farm's bucket count", labels=["farm"])
    in_view = GaugeMetricFamily("vipfarm_members_in_view", "Members in this node's agreed view", labels=["farm"])
    ready = GaugeMetricFamily("vipfarm_agent_ready", "1 when the farm is programmed and a peer is heard (/readyz)",
                              labels=["farm"])
    sent = CounterMetricFamily("vipfarm_heartbeats_sent", "Heartbeat datagrams sent", labels=["farm"])
    received = CounterMetricFamily("vipfarm_heartbeats_received", "Heartbeats accepted", labels=["farm"])
    rejected = CounterMetricFamily("vipfarm_heartbeats_rejected", "Heartbeat datagrams dropped, by reason",
                                   labels=["farm", "reason"])
    gap = GaugeMetricFamily("vipfarm_heartbeat_gap_seconds", "Seconds since the peer's last accepted heartbeat "
                            "(no RTT: the wire has no echo of a send time)", labels=["farm", "peer"])
    failovers = CounterMetricFamily("vipfarm_failovers", "View changes that lost a member", labels=["farm"])
    handovers = CounterMetricFamily("vipfarm_handovers", "Programmings that started a drain", labels=["farm"])
    drained = CounterMetricFamily("vipfarm_handover_flows_drained", "Held flows that ended on their own",
                                  labels=["farm"])
    cut = CounterMetricFamily("vipfarm_handover_flows_cut", "Held flows still open at drainTimeout",
                              labels=["farm"])
    left = GaugeMetricFamily("vipfarm_handover_flows_left", "Flows this node still drains", labels=["farm"])
    checker_runs = CounterMetricFamily("vipfarm_checker_runs", "Checker probes by result",
                                       labels=["farm", "checker", "result"])
    recovery_runs = CounterMetricFamily("vipfarm_recovery_runs", "Recovery command runs by result",
                                        labels=["farm", "checker", "result"])
    budget = GaugeMetricFamily("vipfarm_recovery_budget_exhausted", "1 while this node stays out of the farm "
                               "because its recovery budget is used up (RecoveryBudgetExhausted)", labels=["farm"])
    durations = HistogramMetricFamily("vipfarm_failover_duration_seconds", "From the lost member's last accepted "
                                      "heartbeat to the programming of the view without it", labels=["farm"])
    for f in a.farms:
        for verdict in PACKET_VERDICTS:
            packets.add_metric([f.name, f.interface, verdict], f.counters.get(verdict, 0))
        neighbour.add_metric([f.name, f.interface], f.counters.get("neigh_replied", 0))
        malformed.add_metric([f.name, f.interface], f.counters.get("malformed", 0))
        owned.add_metric([f.name], f.owned)
        buckets.add_metric([f.name], f.buckets)
        in_view.add_metric([f.name], len(f.view))
        ready.add_metric([f.name], 0 if farm_not_ready(f) else 1)
        hc = f.heartbeat_counts
        sent.add_metric([f.name], hc.get("sent", 0))
        received.add_metric([f.name], hc.get("heartbeat_accepted", 0))
        for reason, n in sorted(rejected_by_reason(hc).items()):
            rejected.add_metric([f.name, reason], n)
        for peer, ms in sorted(f.last_heard_ms.items()):
            gap.add_metric([f.name, peer], ms / 1000.0)
        t = f.timeline
        failovers.add_metric([f.name], t.failovers)
        durations.add_metric([f.name], cumulative_buckets(t), t.duration_sum_s)
        handovers.add_metric([f.name], f.handover.started)
        drained.add_metric([f.name], f.handover.flows_drained)
        cut.add_metric([f.name], f.handover.flows_cut)
        left.add_metric([f.name], f.flows_left)
        budget.add_metric([f.name], 1 if f.self_reason == RECOVERY_BUDGET_EXHAUSTED else 0)
        for c in f.checks:
            for result in ("pass", "fail", "timeout"):
                checker_runs.add_metric([f.name, c.name, result], c.runs.get(result, 0))
            for result in ("ok", "failed"):
                recovery_runs.add_metric([f.name, c.name, result], c.recovery_runs.get(result, 0))
    # Datagrams no farm could claim (before the key lookup, an unknown key or farm): farm="".
    unclaimed = {k: n - sum(f.heartbeat_counts.get(k, 0) for f in a.farms) for k, n in a.heartbeat_counts.items()}
    for reason, n in sorted(rejected_by_reason({k: n for k, n in unclaimed.items() if n > 0}).items()):
        if n:
            rejected.add_metric(["", reason], n)
    return [packets, neighbour, malformed, owned, buckets, in_view, ready, sent, received, rejected, gap,
            failovers, durations, handovers, drained, cut, left, checker_runs, recovery_runs, budget]
