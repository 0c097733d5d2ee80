"""vipfarm.base_assignment: one base chain, so restarts and configuration changes agree."""
from __future__ import annotations

from vipfarm.assignment import moved
from vipfarm.base_assignment import config_digest, first_base, next_base

THREE = {"n1": 1, "n2": 1, "n3": 1}
TWO = {"n1": 1, "n2": 1}


def test_an_unchanged_configuration_keeps_the_base():
    b = first_base(THREE, 1024)
    assert next_base(b, dict(THREE), 1024) is b


def test_a_configuration_change_continues_the_chain_with_minimal_movement():
    b1 = first_base(THREE, 1024)
    b2 = next_base(b1, TWO, 1024)
    assert b2.epoch == 2
    assert moved(b1.assignment, b2.assignment) == len(b1.assignment.owned_by("n3"))


def test_the_chain_and_a_fresh_start_differ_which_is_why_bases_are_persisted_and_synced():
    """The 3 -> 2 by SIGHUP, then restart, case: recomputing from nothing would disagree."""
    chained = next_base(first_base(THREE, 1024), TWO, 1024)
    fresh = first_base(TWO, 1024)
    assert chained.config == fresh.config
    assert chained.assignment != fresh.assignment
    assert chained.newer_than(fresh.epoch, fresh.digest)


def test_the_config_digest_names_members_weights_and_bucket_count():
    assert config_digest(THREE, 1024) == config_digest(dict(reversed(list(THREE.items()))), 1024)
    assert config_digest(THREE, 1024) != config_digest(THREE, 512)
    assert config_digest(THREE, 1024) != config_digest({**THREE, "n3": 2}, 1024)
