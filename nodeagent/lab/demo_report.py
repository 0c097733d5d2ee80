"""What the lab demo measured, and its verdict: a pure function of the records.

`vipfarm lab demo` (demo.py, the shell) runs the lab and collects raw records: the prober's
attempts of the traffic step and of the crash step, the holder's records of the rejoin, the
drain and the undrain, the times at which it did each thing, and the errors of steps that
could not run. `summarize()` turns them into the `DemoSummary` the demo prints (`--json`) and
decides whether every step worked, so the verdict can be tested on synthetic records without
a lab (tests/unit/test_demo_report.py). The progress lines' texts are here too, for the same
reason: the shell only decides when to print them.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from .prober import Attempt, clients_of, failed_attempts, recovery_time

MS = 1_000_000
# How far a node's share of the traffic step may be from its weight's share (in share points)
# and still match: the traffic step's ~1,200 connections hash by client IP and port, so each
# share is a binomial draw whose standard deviation is at most 1.5 points; 7 is over 4.5 of those.
SHARE_TOLERANCE = 0.07


@dataclass(frozen=True)
class Measurements:
    """Everything the shell measured. Times are CLOCK_MONOTONIC ns, as in the prober's and the
    holder's records; a step that did not run leaves its fields at None or empty."""
    weights: Mapping[str, int]                  # node -> weight in the farm
    traffic: Sequence[Attempt] = ()             # the traffic step's attempts (ClientIPPort port)
    crashed: str | None = None                  # the node crashed in the crash step
    crash_ns: int | None = None                 # just before the crash
    crash_probe: Sequence[Attempt] = ()         # the crash step's attempts (ClientIP port)
    drained: str | None = None                  # the node drained in the drain step
    held: Sequence[dict] = ()                   # the holder's records (rejoin, drain, undrain)
    drain_ns: int | None = None                 # the drain was asked for (farm file + SIGHUP)
    drained_ns: int | None = None               # the drained node's filter held no bucket
    undrain_ns: int | None = None               # the undrain was asked for
    failures: Sequence[str] = ()                # steps that failed, in the shell's words
    duration_s: float | None = None
    interval_ms: int | None = None              # the farm's heartbeat interval and timeout
    timeout_ms: int | None = None
    lab: str | None = None                      # the lab's namespace prefix


@dataclass(frozen=True)
class DemoSummary:
    distribution: dict[str, int]                # node -> connections it served in the traffic step
    weights: dict[str, int]
    expected_share: dict[str, float]            # node -> its weight's share of the traffic
    matches_weights: bool | None                # None: no traffic measured
    traffic_connections: int
    traffic_failed: int
    crashed: str | None
    crashed_clients: int                        # the clients only the crashed node served before
    failover_ms: float | None                   # until every one of them was served for good again
    other_clients_failed: int                   # failed attempts of the other clients after the crash
    rejoin_reset: int | None                    # held connections reset from the holder's start to the drain
    drained: str | None
    held_connections: int                       # long-lived connections the holder established
    held_on_drained: int                        # ... that the drained node served
    new_to_drained: int                         # new connections it took while drained
    connections_reset: int | None               # held connections reset from the drain on
    heartbeat: dict[str, int | None]
    duration_s: float | None
    lab: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_json(self) -> dict:
        """The one JSON object `vipfarm lab demo --json` prints."""
        return {"ok": self.ok, "errors": list(self.errors), "distribution": dict(self.distribution),
                "weights": dict(self.weights), "expected_share": dict(self.expected_share),
                "matches_weights": self.matches_weights, "traffic_connections": self.traffic_connections,
                "traffic_failed": self.traffic_failed, "crashed": self.crashed,
                "crashed_clients": self.crashed_clients, "failover_ms": self.failover_ms,
                "other_clients_failed": self.other_clients_failed, "rejoin_reset": self.rejoin_reset,
                "drained": self.drained, "held_connections": self.held_connections,
                "held_on_drained": self.held_on_drained, "new_to_drained": self.new_to_drained,
                "connections_reset": self.connections_reset, "heartbeat": dict(self.heartbeat),
                "duration_s": self.duration_s, "lab": self.lab}


def expected_shares(weights: Mapping[str, int]) -> dict[str, float]:
    total = sum(weights.values())
    return {n: (w / total if total else 0.0) for n, w in weights.items()}


def distribution(attempts: Sequence[Attempt], nodes: Sequence[str]) -> dict[str, int]:
    """node -> successful attempts it answered, every node of `nodes` present (0 if none)."""
    served = Counter(a.node for a in attempts if a.ok)
    return {n: served.get(n, 0) for n in nodes} | {n: c for n, c in served.items() if n not in nodes}


def resets_between(held: Sequence[dict], since: int | None, until: int | None) -> int:
    """Held connections the holder saw reset at a time in [since, until) (None: open end)."""
    return sum(1 for r in held if r.get("type") == "reset"
               and (since is None or r["t_ns"] >= since) and (until is None or r["t_ns"] < until))


def summarize(m: Measurements) -> DemoSummary:
    errors = list(m.failures)
    nodes = sorted(m.weights)
    expected = expected_shares(m.weights)

    # 1. traffic: every node served, the spread close to the weights.
    dist = distribution(m.traffic, nodes)
    ok_total = sum(dist.values())
    failed = sum(1 for a in m.traffic if not a.ok)
    matches = None
    if m.traffic:
        idle = [n for n in nodes if m.weights[n] > 0 and dist[n] == 0]
        errors += [f"node {n} served none of the traffic step's {len(m.traffic)} connections" for n in idle]
        if failed:
            errors.append(f"{failed} of the traffic step's {len(m.traffic)} connections failed "
                          f"({_outcomes(a for a in m.traffic if not a.ok)})")
        off = {n: dist[n] / ok_total - expected[n] for n in nodes} if ok_total else {}
        matches = bool(off) and all(abs(d) <= SHARE_TOLERANCE for d in off.values())
        if ok_total and not matches:
            errors.append("the traffic did not follow the weights: " + ", ".join(
                f"{n} {100 * dist[n] / ok_total:.1f}% for {100 * expected[n]:.1f}%" for n in nodes)
                + f" (tolerance {100 * SHARE_TOLERANCE:.0f} points)")
    elif not m.failures:
        errors.append("no traffic measured")

    # 2. crash: the clients of the crashed node served again, and when.
    failover_ms = None
    mine: list[str] = []
    others_failed = 0
    if m.crashed is not None and m.crash_ns is not None:
        mine = clients_of(m.crash_probe, m.crashed, until=m.crash_ns)
        if not mine:
            errors.append(f"failover not measured: {m.crashed} served none of the prober's clients "
                          f"before the crash")
        else:
            ns = recovery_time(m.crash_probe, mine, m.crash_ns)
            if ns is None:
                errors.append(f"failover not measured: {m.crashed}'s {len(mine)} clients were not all "
                              f"served again after the crash")
            else:
                failover_ms = round(ns / MS, 1)
        others = sorted({a.client for a in m.crash_probe} - set(mine))
        others_failed = len(failed_attempts(m.crash_probe, m.crash_ns, 2**63, clients=others))
    elif not m.failures:
        errors.append("failover not measured: the crash step did not run")

    # 3. rejoin, drain, undrain: the holder's connections.
    held_ids = {r["id"] for r in m.held if r.get("type") == "open"}
    first_node = {r["id"]: r["node"] for r in m.held if r.get("type") == "served"}
    open_failed = sum(1 for r in m.held if r.get("type") == "open_failed")
    rejoin_reset = connections_reset = None
    held_on_drained = new_to_drained = 0
    if m.held:
        rejoin_reset = resets_between(m.held, None, m.drain_ns)
        if rejoin_reset:
            errors.append(f"{rejoin_reset} held connections reset before the drain (the rejoin of {m.crashed})")
        if open_failed:
            errors.append(f"{open_failed} of the holder's long-lived connections failed to open")
    if m.drained is not None and m.drain_ns is not None:
        connections_reset = resets_between(m.held, m.drain_ns, None)
        held_on_drained = sum(1 for n in first_node.values() if n == m.drained)
        if connections_reset:
            errors.append(f"{connections_reset} held connections reset by the drain and undrain of {m.drained}")
        if not held_on_drained:
            errors.append(f"the drain was not under load: {m.drained} served none of the "
                          f"{len(held_ids)} held connections")
        if m.drained_ns is not None:
            new_to_drained = sum(1 for r in m.held if r.get("type") == "new" and r.get("outcome") == "ok"
                                 and r.get("node") == m.drained and r["t_ns"] >= m.drained_ns
                                 and (m.undrain_ns is None or r["t_ns"] < m.undrain_ns))
            if new_to_drained:
                errors.append(f"{m.drained} took {new_to_drained} new connections while drained")
    elif not m.failures:
        errors.append("the drain did not run")

    return DemoSummary(
        distribution=dist, weights=dict(m.weights), expected_share={n: round(v, 4) for n, v in expected.items()},
        matches_weights=matches, traffic_connections=len(m.traffic), traffic_failed=failed,
        crashed=m.crashed, crashed_clients=len(mine), failover_ms=failover_ms, other_clients_failed=others_failed,
        rejoin_reset=rejoin_reset, drained=m.drained, held_connections=len(held_ids),
        held_on_drained=held_on_drained, new_to_drained=new_to_drained, connections_reset=connections_reset,
        heartbeat={"interval_ms": m.interval_ms, "timeout_ms": m.timeout_ms},
        duration_s=None if m.duration_s is None else round(m.duration_s, 1), lab=m.lab, errors=errors)


def _outcomes(attempts) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(Counter(a.outcome for a in attempts).items()))


# -- the texts of the progress lines (pure; the shell prints them) ----------------------------
def bar(n: int, total: int, width: int = 40) -> str:
    return "#" * round(width * n / total) if total > 0 else ""


def counts_text(counts: Mapping[str, int]) -> str:
    return " ".join(f"{n} {c}" for n, c in sorted(counts.items()))


def distribution_lines(dist: Mapping[str, int], weights: Mapping[str, int],
                       buckets: Mapping[str, int]) -> list[str]:
    """One line per node: weight, buckets held, connections served, share against the weight's, a bar."""
    total = sum(dist.values())
    expected = expected_shares(weights)
    return [f"{n}  weight {weights.get(n, 0)}  buckets {buckets.get(n, 0):4d}  connections {c:5d}  "
            f"{100 * c / total if total else 0:5.1f}% (weight share {100 * expected.get(n, 0):4.1f}%)  "
            f"{bar(c, total)}" for n, c in sorted(dist.items())]


def traffic_verdict(attempts: Sequence[Attempt], weights: Mapping[str, int]) -> str:
    """One line: did every node serve, and does the spread follow the weights?"""
    dist = distribution(attempts, sorted(weights))
    total = sum(dist.values())
    idle = [n for n in sorted(weights) if weights[n] > 0 and not dist.get(n)]
    if not total:
        return "no connection was served"
    expected = expected_shares(weights)
    worst = max(abs(dist.get(n, 0) / total - expected[n]) for n in weights)
    served = "every node served" if not idle else f"{', '.join(idle)} served nothing"
    follows = "follows" if worst <= SHARE_TOLERANCE else "does NOT follow"
    return (f"{served}; the spread {follows} the weights (largest gap {100 * worst:.1f} points, "
            f"tolerance {100 * SHARE_TOLERANCE:.0f})")


def traffic_progress(attempts: Sequence[Attempt], nodes: Sequence[str]) -> str:
    failed = sum(1 for a in attempts if not a.ok)
    return f"{len(attempts)} connections: {counts_text(distribution(attempts, nodes))}, failed {failed}"


def recovery_progress(attempts: Sequence[Attempt], clients: Sequence[str], since: int) -> str:
    """How many of `clients` had a success after `since`, and who served them."""
    served = {a.client: a.node for a in attempts if a.ok and a.t_ns >= since and a.client in set(clients)}
    by = sorted(set(served.values()))
    return f"{len(served)} of {len(clients)} served again" + (f" (by {', '.join(by)})" if by else "")


def holder_progress(held: Sequence[dict], since: int, drained: str | None = None) -> str:
    """The long-lived connections (up, reset) and the new connections since `since` by node."""
    up = sum(1 for r in held if r.get("type") == "served")
    reset = sum(1 for r in held if r.get("type") == "reset")
    new = Counter(r["node"] for r in held if r.get("type") == "new" and r.get("outcome") == "ok"
                  and r["t_ns"] >= since)
    if drained is not None:
        new.setdefault(drained, 0)
    return f"held {up} (reset {reset}); new connections since: {counts_text(new) or 'none yet'}"
