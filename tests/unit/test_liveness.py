"""vipfarm.liveness: replay protection across restarts, freshness, relayed rows."""
from __future__ import annotations

from dataclasses import dataclass

from vipfarm.liveness import ACCEPTED, NOT_MEMBER, OLD_BOOT, PENDING_ECHO, REPLAYED, PeerTable

MS = 1_000_000
A, B, C = 1, 2, 3
NAMES = {A: "a", B: "b", C: "c"}


@dataclass(frozen=True)
class R:
    node_id: int
    boot: int
    seq: int
    age_ms: int
    heard: frozenset
    agree: bytes = b"d" * 8
    flags: int = 0


def table(boot=100):
    return PeerTable(A, boot, NAMES, 300 * MS)


def hb(t, sender=B, boot=200, seq=1, echo_boot=100, now=0, heard=(A, B, C), rows=()):
    own = R(sender, boot, seq, 0, frozenset(heard))
    return t.receive(sender, boot, seq, [(A, echo_boot)], (own,) + tuple(rows), now)


def test_a_new_peer_is_counted_once_it_echoes_our_boot():
    t = table()
    assert t.receive(B, 200, 1, [], [R(B, 200, 1, 0, frozenset({B}))], 0) == PENDING_ECHO
    assert t.echoes() == ((B, 200),), "we echo the pending boot so its next heartbeat can confirm it"
    assert B not in t.heard(0)
    assert hb(t, seq=2) == ACCEPTED
    assert B in t.heard(0)


def test_a_replayed_heartbeat_of_the_current_boot_is_refused():
    t = table()
    assert hb(t, seq=5) == ACCEPTED
    assert hb(t, seq=5, now=1) == REPLAYED
    assert hb(t, seq=3, now=1) == REPLAYED
    assert hb(t, seq=6, now=1) == ACCEPTED


def test_a_restarted_peer_is_accepted_and_its_old_run_never_again():
    t = table()
    assert hb(t, boot=200, seq=50) == ACCEPTED
    assert hb(t, boot=201, seq=1, now=10 * MS) == ACCEPTED        # restarted, echoes our boot
    assert hb(t, boot=200, seq=51, now=20 * MS) == OLD_BOOT       # capture of its earlier run
    assert hb(t, boot=201, seq=2, now=30 * MS) == ACCEPTED


def test_captures_from_before_our_own_restart_are_never_counted():
    # We restarted (boot 101); a capture of b made while we were boot 100 echoes 100.
    t = table(boot=101)
    assert hb(t, boot=200, seq=999, echo_boot=100) == PENDING_ECHO
    assert B not in t.heard(0)


def test_heartbeats_of_non_members_are_refused():
    t = table()
    assert t.receive(9, 1, 1, [(A, 100)], [], 0) == NOT_MEMBER


def test_a_peer_not_heard_for_the_timeout_is_no_longer_heard():
    t = table()
    hb(t, seq=1, now=0)
    assert B in t.heard(300 * MS)
    assert B not in t.heard(300 * MS + 1)
    assert t.next_expiry_ns(0) == 300 * MS + 1


def test_a_relayed_row_keeps_a_member_in_the_matrix_that_we_do_not_hear():
    t = table()
    hb(t, sender=B, seq=1, now=0, rows=[R(C, 300, 7, 40, frozenset({B, C}))])
    m = t.matrix(0, t.heard(0))
    assert m["c"] == frozenset({"b", "c"}), "c's row, relayed by b, is in the matrix"
    assert "c" not in {NAMES[i] for i in t.heard(0)}
    # its age counts: the row expires 40 ms earlier than one heard first hand
    assert "c" in t.matrix(260 * MS, t.heard(260 * MS))
    assert "c" not in t.matrix(261 * MS, t.heard(261 * MS))


def test_an_older_relayed_row_never_replaces_a_newer_one():
    t = table()
    hb(t, sender=B, seq=1, now=0, rows=[R(C, 300, 7, 0, frozenset({B, C}))])
    hb(t, sender=B, seq=2, now=1 * MS, rows=[R(C, 300, 6, 0, frozenset({C}))])
    assert t.matrix(1 * MS, t.heard(1 * MS))["c"] == frozenset({"b", "c"})


def test_agreement_needs_every_other_view_member_to_advertise_the_digest():
    t = table()
    hb(t, sender=B, seq=1, rows=[R(C, 300, 1, 0, frozenset({A, B, C}), b"e" * 8)])
    assert t.agrees([A, B], b"d" * 8, 0)
    assert not t.agrees([A, B, C], b"d" * 8, 0)
    assert not t.agrees([A, B], b"d" * 8, 301 * MS), "a stale row agrees with nothing"
