"""nodeagent.heartbeat: the whole protocol between real engines over a simulated network.

Each engine is the real HeartbeatEngine; only its sockets are replaced by an in-memory
network with a fake clock, so the tests can crash nodes, cut links one way, replay captures
and measure, at 1 ms resolution, how long any bucket had two owners or none.
"""
from __future__ import annotations

import heapq
import itertools

from vipfarm.base_assignment import first_base, next_base
from vipfarm.heartbeat_keys import Key, Keyring
from vipfarm.heartbeat_wire import Heartbeat, Row, encode, node_id

from nodeagent.heartbeat import FarmPeers, HeartbeatEngine

MS = 1_000_000
KEY = Keyring(Key(b"k" * 40), (Key(b"k" * 40),))
OTHER_KEY = Keyring(Key(b"o" * 40), (Key(b"o" * 40),))


class FakeLeases:
    def __init__(self):
        self.deadlines = {}                # farm -> syn_deadline
        self.leases = {}                   # farm -> (syn_deadline, deadline)

    def renew(self, farm, syn_deadline, deadline):
        self.deadlines[farm] = syn_deadline
        self.leases[farm] = (syn_deadline, deadline)
        return True


class Net:
    """Delivers datagrams after `delay_ms`; `cut` holds (from, to) pairs that are dropped."""

    def __init__(self, names, weights=None, interval=100, timeout=300, buckets=256, delay_ms=1):
        self.now = 1_000 * MS
        self.delay = delay_ms * MS
        self.queue: list = []
        self.counter = itertools.count()
        self.cut: set[tuple[str, str]] = set()
        self.down: set[str] = set()
        self.captured: list[tuple[str, str, bytes]] = []
        self.weights = weights or {n: 1 for n in names}
        self.names = list(names)
        self.base = first_base(self.weights, buckets)
        self.interval, self.timeout, self.buckets = interval, timeout, buckets
        self.engines: dict[str, HeartbeatEngine] = {}
        self.decisions: dict[str, list] = {n: [] for n in names}
        self.leases = {n: FakeLeases() for n in names}
        self.history: list[tuple[int, dict[str, frozenset[int]]]] = []
        self.slow: dict[str, int] = {}
        self.programming: list = []
        for n in names:
            self.start(n)

    def peers(self, n, base="default", keyring=KEY, withdrawn=False, draining=False):
        return FarmPeers("web", n, dict(self.weights), {m: f"198.51.100.{i + 1}" for i, m in enumerate(self.names)},
                         7946, self.interval, self.timeout, keyring, self.buckets,
                         self.base if base == "default" else base, withdrawn=withdrawn, draining=draining)

    def start(self, n, base="default"):
        e = HeartbeatEngine(n, lambda d, n=n: self.program(n, d), lambda farm, b: None,
                            self.leases[n], base_from_chunks=_decode, base_to_bytes=_encode, clock=lambda: self.now)
        e._ensure_socket = lambda p: None
        e._socket_for = lambda f: object()
        e._send_all = lambda f, s, data, only=None, n=n: self.send(n, data, only)
        e.configure([self.peers(n, base)])
        e._take_config()
        self.engines[n] = e
        return e

    def program(self, n, d):
        """The main thread's part, done at once (or `slow[n]` ms later): record the decision,
        program it, say so."""
        self.decisions[n].append(d)
        if self.slow.get(n):
            self.programming.append((self.now + self.slow[n] * MS, n, d))
        else:
            self.engines[n].programmed(d.farm, d.buckets)

    def filters(self) -> dict[str, frozenset[int]]:
        """What each live node's filter holds: what its main thread last programmed."""
        return {n: e._programmed.get("web", frozenset()) for n, e in self.engines.items() if n not in self.down}

    def send(self, src, data, only):
        for dst in self.names:
            if dst == src or (only and dst != only):
                continue
            self.captured.append((src, dst, data))
            if (src, dst) in self.cut or src in self.down:
                continue
            heapq.heappush(self.queue, (self.now + self.delay, next(self.counter), dst, data))

    def serving(self) -> dict[str, frozenset[int]]:
        out = {}
        for n, e in self.engines.items():
            if n in self.down:
                continue
            f = e.farms["web"]
            out[n] = f.current
        return out

    def run(self, ms: int):
        end = self.now + ms * MS
        while self.now < end:
            self.now += MS
            due = [p for p in self.programming if p[0] <= self.now]
            self.programming = [p for p in self.programming if p[0] > self.now]
            for _, n, d in due:
                if n in self.engines and n not in self.down:
                    self.engines[n].programmed(d.farm, d.buckets)
            while self.queue and self.queue[0][0] <= self.now:
                _, _, dst, data = heapq.heappop(self.queue)
                if dst in self.engines and dst not in self.down:
                    self.engines[dst]._receive(data, self.now)
            for n, e in self.engines.items():
                if n not in self.down:
                    e._renew_if_reprogrammed(self.now)       # as the thread's loop does
                    e._send_if_handover_changed(self.now)
                    e.tick(self.now)
            self.history.append((self.now, self.serving()))

    def owners(self, serving):
        counts = [0] * self.buckets
        for s in serving.values():
            for b in s:
                counts[b] += 1
        return counts

    def windows(self, since_ns=0):
        """Longest run (ms) of any bucket with two owners, and with none."""
        longest_double = longest_zero = 0
        run_double = [0] * self.buckets
        run_zero = [0] * self.buckets
        for t, serving in self.history:
            if t < since_ns:
                continue
            for b, c in enumerate(self.owners(serving)):
                run_double[b] = run_double[b] + 1 if c >= 2 else 0
                run_zero[b] = run_zero[b] + 1 if c == 0 else 0
                longest_double = max(longest_double, run_double[b])
                longest_zero = max(longest_zero, run_zero[b])
        return longest_double, longest_zero


def _encode(base):
    from vipfarm.base_assignment import encode_base
    return encode_base(base)


def _decode(data):
    from vipfarm.base_assignment import decode_base
    try:
        return decode_base(data)
    except ValueError:
        return None


def assert_exactly_one_owner(net, who=None):
    serving = {n: s for n, s in net.serving().items() if who is None or n in who}
    counts = net.owners(serving)
    assert counts == [1] * net.buckets, (
        f"{sum(1 for c in counts if c == 0)} buckets have no owner, {sum(1 for c in counts if c > 1)} two")


def test_three_nodes_agree_and_every_bucket_has_one_owner():
    net = Net("abc")
    net.run(500)
    assert_exactly_one_owner(net)
    assert net.serving()["a"] == frozenset(net.base.assignment.owned_by("a"))


def test_a_crashed_node_is_replaced_within_the_timeout_plus_one_round():
    net = Net("abc")
    net.run(500)
    lost = net.serving()["c"]
    net.down.add("c")
    crash = net.now
    net.run(600)
    assert_exactly_one_owner(net, "ab")
    back = next(t for t, s in net.history if t > crash and net.owners({k: v for k, v in s.items() if k != "c"})
                == [1] * net.buckets)
    assert (back - crash) / MS <= net.timeout + net.interval + 50, f"failover took {(back - crash) / MS} ms"
    assert lost <= net.serving()["a"] | net.serving()["b"]
    # nothing else moved: a and b kept their buckets
    assert frozenset(net.base.assignment.owned_by("a")) <= net.serving()["a"]
    double, _ = net.windows(crash)
    assert double == 0


def test_one_way_loss_moves_nothing():
    net = Net("abc")
    net.run(500)
    before = net.serving()
    net.cut.add(("b", "a"))           # a stops hearing b; c hears both, b hears a
    t = net.now
    net.run(1500)
    assert net.serving() == before
    assert net.windows(t) == (0, 0)


def test_the_minority_side_of_a_partition_stops_serving_and_the_majority_takes_over():
    net = Net("abcde", buckets=512)
    net.run(500)
    for x, y in itertools.product("ab", "cde"):
        net.cut |= {(x, y), (y, x)}
    t = net.now
    net.run(1000)
    s = net.serving()
    assert s["a"] == s["b"] == frozenset()
    assert_exactly_one_owner(net, "cde")
    double, _ = net.windows(t)
    assert double == 0, f"a bucket had two owners for {double} ms"
    net.cut.clear()                    # heal
    t = net.now
    net.run(1000)
    assert_exactly_one_owner(net)
    assert net.serving()["a"] == frozenset(net.base.assignment.owned_by("a"))
    assert net.windows(t)[0] == 0


def test_forged_replayed_and_garbage_datagrams_change_nothing():
    net = Net("abc")
    net.run(500)
    captured = [d for s, _, d in net.captured if s == "c"]
    forged = [encode(Heartbeat("web", node_id("c"), 7, 10**6 + k, net.base.epoch, net.base.digest,
                               ((node_id("a"), 1), (node_id("b"), 1)),
                               (Row(node_id("c"), 7, 10**6 + k, 0, frozenset(map(node_id, "abc")), b"x" * 8),)),
                     OTHER_KEY.signing) for k in range(10)]
    garbage = [b"", b"VFH1", bytes(range(256)), b"\xff" * 1500, captured[-1][:-1], captured[-1][:40] + b"\0" * 60]
    net.down.add("c")                  # c crashes; an attacker replays its heartbeats and forges more
    t = net.now
    for _ in range(60):
        for e in (net.engines["a"], net.engines["b"]):
            for d in captured[-30:] + forged + garbage:
                e._receive(d, net.now)
        net.run(10)
    assert net.serving()["a"] | net.serving()["b"] == frozenset(range(net.buckets)), \
        "the replays and forgeries must not keep the crashed node alive"
    assert_exactly_one_owner(net, "ab")
    stats = net.engines["a"].stats()
    assert stats.get("heartbeat_replayed", 0) > 0, stats
    assert stats.get("rejected_unknown_key", 0) >= 600, stats
    assert sum(v for k, v in stats.items() if k.startswith("rejected_")) >= 600 + 6 * 60, stats
    assert (net.now - t) / MS >= 600


def test_a_restarted_agent_with_its_base_moves_nothing():
    net = Net("abc")
    net.run(500)
    before = net.serving()
    old = net.engines["c"]
    carried = old.farms["web"].current
    net.start("c")                          # new boot, same base (persisted)
    net.engines["c"].farms["web"].current = carried   # adopted pins
    t = net.now
    net.run(800)
    assert net.serving() == before
    assert net.windows(t) == (0, 0)


def test_a_restarted_agent_without_state_adopts_the_chained_base_from_its_peers():
    """The 3 -> 2 by SIGHUP then restart case: the restarted node must not start a chain of its own."""
    net = Net("abc")
    net.run(300)
    two = {"a": 1, "b": 1}
    chained = next_base(net.base, two, net.buckets)
    net.names, net.weights, net.base = ["a", "b"], two, chained
    net.down.add("c")
    del net.engines["c"]
    for n in "ab":
        net.engines[n].configure([net.peers(n)])
        net.engines[n]._take_config()
    net.run(500)
    assert_exactly_one_owner(net, "ab")
    net.start("b", base=None)               # b lost /run: no persisted base
    net.run(1500)
    assert net.engines["b"].farms["web"].cfg.base == chained
    assert_exactly_one_owner(net, "ab")


def test_a_withdrawn_node_keeps_its_vote_and_serves_nothing():
    net = Net("abc")
    net.run(500)
    e = net.engines["c"]
    e.configure([net.peers("c", withdrawn=True)])
    e._take_config()
    net.run(500)
    assert net.serving()["c"] == frozenset()
    assert_exactly_one_owner(net, "ab")
    net.down.add("b")                       # b crashes: a and withdrawn c still make a quorum
    net.run(600)
    assert_exactly_one_owner(net, "a")


def test_a_draining_node_keeps_its_vote_serves_nothing_new_and_an_undrain_gives_its_buckets_back():
    net = Net("abc")
    net.run(500)
    before = dict(net.serving())
    e = net.engines["c"]
    e.configure([net.peers("c", draining=True)])
    e._take_config()
    net.run(500)
    assert net.serving()["c"] == frozenset()
    assert_exactly_one_owner(net, "ab")
    assert net.decisions["a"][-1].draining == {"c"}, "a learns of c's drain from c's own row"
    assert net.serving()["a"] >= before["a"] and net.serving()["b"] >= before["b"], "only c's buckets move"
    net.down.add("b")                       # b crashes: a and draining c still make a quorum
    net.run(600)
    assert_exactly_one_owner(net, "a")
    net.down.discard("b")
    net.start("b")
    net.run(800)
    e.configure([net.peers("c", draining=False)])
    e._take_config()
    net.run(500)
    assert net.serving() == before, "an undrain gives back exactly the base buckets"


def test_a_filter_holding_buckets_it_should_have_released_gets_no_lease():
    """A restarted agent adopted a filter whose buckets its peers took meanwhile: until the
    main thread has programmed the engine's decision, that stale filter must not be renewed."""
    net = Net("abc")
    net.run(500)
    e = net.engines["a"]
    stale = frozenset(range(net.buckets))             # the filter holds far more than a's share
    e.programmed("web", stale)
    before = net.leases["a"].deadlines["web"]
    net.run(300)
    assert net.leases["a"].deadlines["web"] == before, "a lease was renewed for a filter holding others' buckets"
    e.programmed("web", e.farms["web"].current)      # programmed as decided: renewals resume
    net.run(200)
    assert net.leases["a"].deadlines["web"] > before


def test_the_lease_is_renewed_at_once_when_the_filter_is_reprogrammed_as_decided():
    """The renewal withheld while the filter held released buckets is owed when the main thread
    reports the programming, not at the next send tick (by then the SYN stage may be over)."""
    net = Net("abc")
    net.run(500)
    e = net.engines["a"]
    e.programmed("web", frozenset(range(net.buckets)))
    net.run(150)
    before = net.leases["a"].deadlines["web"]
    net.cut |= {("b", "a"), ("c", "a")}               # no heartbeat to renew it meanwhile
    e.farms["web"].next_send_ns = net.now + 50 * MS     # nor a send tick
    e.programmed("web", e.farms["web"].current)
    net.run(1)
    assert net.leases["a"].deadlines["web"] > before


def test_each_accepted_heartbeat_renews_the_lease():
    """The lease follows the last contact as it arrives: a node whose own send ticks are late
    (its thread delayed) keeps its lease on its peers' heartbeats alone."""
    net = Net("abc")
    net.run(500)
    e = net.engines["a"]
    e.tick = lambda now: e._evaluate(e.farms["web"], now)     # 250 ms of ticks that send nothing
    net.run(250)
    newest = max(p.last_heard_ns for p in e.farms["web"].table.peers.values())
    syn_deadline, _ = net.leases["a"].leases["web"]
    assert newest > net.now - 110 * MS
    assert syn_deadline >= newest + 200 * MS, (syn_deadline - net.now) / MS


def test_a_cut_off_nodes_lease_ends_before_its_peers_take_its_buckets():
    """Whatever the phase of the heartbeats at the cut, the lease of the node on the minority
    side lapses (the filter drops everything for its buckets) before the majority acquires."""
    for phase in range(0, 100, 10):
        net = Net("abc")
        net.run(500 + phase)
        lost = net.serving()["c"]
        net.cut |= {(x, y) for x in "ab" for y in "c"} | {(y, x) for x in "ab" for y in "c"}
        t_cut = net.now
        net.run(800)
        taken = next(t for t, s in net.history if t > t_cut and lost & (s["a"] | s["b"]))
        syn_deadline, deadline = net.leases["c"].leases["web"]
        assert deadline < taken, (f"phase {phase}: c's filter takes flows until {(deadline - t_cut) / MS} ms "
                                  f"after the cut, its peers from {(taken - t_cut) / MS} ms")


def test_lease_is_renewed_only_in_a_quorum_view():
    net = Net("abc")
    net.run(500)
    assert net.leases["a"].deadlines["web"] > net.now
    net.cut |= {("b", "a"), ("c", "a"), ("a", "b"), ("a", "c")}
    net.run(1000)
    assert net.leases["a"].deadlines["web"] < net.now, "cut off from a quorum, a's lease must lapse"


def test_a_key_rotation_in_three_steps_loses_no_heartbeat():
    """Every agent accepts the new key before any signs with it (heartbeat_keys' procedure):
    at every step, with the agents reconfigured one by one, the view never changes."""
    old, new = Key(b"o" * 40), Key(b"n" * 40)
    steps = [Keyring(old, (old, new)), Keyring(new, (new, old)), Keyring(new, (new,))]
    net = Net("abc")
    for n in "abc":
        net.engines[n].configure([net.peers(n, keyring=Keyring(old, (old,)))])
        net.engines[n]._take_config()
    net.run(500)
    t = net.now
    for ring in steps:
        for n in "abc":
            net.engines[n].configure([net.peers(n, keyring=ring)])
            net.engines[n]._take_config()
            net.run(150)                       # one agent at a time, a little apart
    net.run(500)
    assert_exactly_one_owner(net)
    assert net.windows(t) == (0, 0)
    assert all(not e.stats().get("rejected_unknown_key") for e in net.engines.values())


def test_swapping_the_key_in_one_step_does_lose_heartbeats():
    """The contrast: the agents reconfigured one by one from old to new alone stop hearing each other."""
    old, new = Key(b"o" * 40), Key(b"n" * 40)
    net = Net("abc")
    for n in "abc":
        net.engines[n].configure([net.peers(n, keyring=Keyring(old, (old,)))])
        net.engines[n]._take_config()
    net.run(500)
    for n in "abc":
        net.engines[n].configure([net.peers(n, keyring=Keyring(new, (new,)))])
        net.engines[n]._take_config()
        net.run(400)
    assert any(e.stats().get("rejected_unknown_key") for e in net.engines.values())
    assert any(len(d.view) < 3 for n in "abc" for d in net.decisions[n]), "no agent lost a peer"


def test_the_worst_send_delay_is_the_longest_gap_past_an_interval_even_when_a_view_change_follows():
    net = Net("abc")
    net.run(500)
    e = net.engines["b"]
    assert e.stats()["worst_send_delay_us"] < 5_000
    net.down.add("b")                  # b's thread stalls 400 ms: it sends nothing, hears nothing
    net.run(400)
    net.down.discard("b")
    net.run(300)                        # it wakes, sees its view changed, sends at once
    assert e.stats()["worst_send_delay_us"] >= 300_000, e.stats()


def test_a_killed_agents_lease_ends_before_its_peers_take_its_buckets():
    """An agent that stops (killed, frozen) renews no more: its last renewal came after its
    last contact, so its filter is out before the peers' timeout of its last heartbeat."""
    for phase in range(0, 100, 10):
        net = Net("abc")
        net.run(500 + phase)
        lost = net.serving()["c"]
        net.down.add("c")                       # no more ticks, sends or receipts: a dead agent
        t_kill = net.now
        net.run(800)
        taken = next(t for t, s in net.history if t > t_kill and lost & (s["a"] | s["b"]))
        _, deadline = net.leases["c"].leases["web"]
        assert deadline < taken, (f"phase {phase}: c's filter takes flows until {(deadline - t_kill) / MS} ms "
                                  f"after the kill, its peers from {(taken - t_kill) / MS} ms")


def test_late_peer_heartbeats_do_not_lapse_the_lease():
    """Jitter: both peers' next heartbeats 120 ms late (a 220 ms gap) must not stop this node
    taking new flows; the SYN stage ends 240 ms after the last contact at the defaults."""
    net = Net("abc")
    net.run(500)
    table = net.engines["a"].farms["web"].table
    net.cut |= {("b", "a"), ("c", "a")}
    newest = lambda: max(p.last_heard_ns for p in table.peers.values())     # noqa: E731
    while net.now - newest() < 220 * MS:
        net.run(1)
    syn_deadline, _ = net.leases["a"].leases["web"]
    assert syn_deadline > net.now, "a's SYN stage lapsed although its peers were only 120 ms late"
    while net.now - newest() < 245 * MS:
        net.run(1)
    assert net.leases["a"].leases["web"][0] < net.now, "past the SYN stage the lease must have lapsed"


def test_a_node_handing_over_tells_its_peers_at_once_and_stops_telling_when_its_drain_ends():
    """The flag the new owners keep their acquired buckets on the slow path by: sent with the
    next triggered heartbeat (not an interval later), and relayed, so every member sees it."""
    net = Net("abc")
    net.run(500)
    net.engines["a"].handing_over("web", True)
    net.run(5)
    for n in "bc":
        assert net.decisions[n][-1].peers_handing_over, f"{n} did not hear a's handover within 5 ms"
    assert not net.decisions["a"][-1].peers_handing_over, "a's own flag is not a peer's"
    net.cut |= {("a", "c")}                           # c now hears a's flag only through b's relay
    net.run(400)
    assert net.decisions["c"][-1].peers_handing_over
    net.engines["a"].handing_over("web", False)
    net.run(150)
    assert not net.decisions["c"][-1].peers_handing_over
    assert not net.decisions["b"][-1].peers_handing_over


def test_a_restarted_agent_does_not_extend_the_lease_of_an_adopted_filter_its_peers_took_over():
    """c is down past the timeout, a and b take its buckets; c's agent restarts over its pinned
    filter (still holding its old buckets). Until its first decision, c must not renew that
    filter's lease: the peers own those buckets now, and two owners answer SYNs twice."""
    from dataclasses import replace
    net = Net("abc")
    net.run(500)
    old = net.serving()["c"]
    net.down.add("c")
    net.run(600)
    assert_exactly_one_owner(net, "ab")
    lease_before = net.leases["c"].leases["web"]
    net.down.discard("c")
    e = net.start("c")
    e.configure([replace(net.peers("c"), adopted=old)])
    e._take_config()
    e.programmed("web", old)
    renewed_undecided = []
    for _ in range(300):
        net.run(1)
        if not e.farms["web"].decided and net.leases["c"].leases["web"] != lease_before:
            renewed_undecided.append(net.now)
    assert renewed_undecided == [], "c renewed its stale filter's lease before deciding"
    assert e.farms["web"].decided
    assert_exactly_one_owner(net)


def test_a_rejoining_node_acquires_only_after_the_old_owners_filters_gave_its_buckets_up():
    """Acquire late means after the release is programmed, not only decided: with the old
    owners' main threads 30 ms slow to program, no bucket is ever in two filters."""
    net = Net("abc")
    net.run(500)
    net.down.add("c")
    net.run(600)
    net.down.discard("c")
    net.slow = {"a": 30, "b": 30}
    net.start("c")
    doubles = []
    for _ in range(800):
        net.run(1)
        f = net.filters()
        if len(f) == 3 and (f["c"] & (f["a"] | f["b"]) or f["a"] & f["b"]):
            doubles.append(net.now)
    assert doubles == [], f"{len(doubles)} ms with a bucket in two filters"
    assert_exactly_one_owner(net)
    assert net.filters()["c"], "c got its buckets back"
