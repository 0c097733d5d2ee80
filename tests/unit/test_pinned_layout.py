"""Which adopted pins of another shape may be re-created, and the error for the others (pure)."""
from __future__ import annotations

from nodeagent.pinned_layout import Shape, mismatch, unusable

STATS = Shape(map_type=6, key_size=4, value_size=8, max_entries=231)
OWNER = Shape(map_type=2, key_size=4, value_size=8, max_entries=65536)


def test_a_pin_of_the_declared_shape_is_no_mismatch():
    assert mismatch("vf_stats", "/p/vf_stats", STATS, STATS) is None


def test_counters_and_lease_of_another_shape_may_be_recreated():
    found = [mismatch("vf_stats", "/p/n1/eth0/vf_stats", STATS, Shape(6, 4, 8, 198)),
             mismatch("vf_lease", "/p/n1/eth0/vf_lease", Shape(2, 4, 8, 32), Shape(2, 4, 4, 32))]
    assert found[0].differences == "max_entries pinned=198 declared=231"
    assert found[1].differences == "value_size pinned=4 declared=8"
    assert unusable(found) is None


def test_an_ownership_pin_of_another_shape_is_refused_naming_the_pin_the_values_and_the_fix():
    found = [mismatch("vf_stats", "/p/n1/eth0/vf_stats", STATS, Shape(6, 4, 8, 198)),
             mismatch("vf_owner", "/p/n1/eth0/vf_owner", OWNER, Shape(2, 4, 8, 1024))]
    error = unusable(found)
    assert "/p/n1/eth0/vf_owner: max_entries pinned=1024 declared=65536" in error
    assert "vf_stats" not in error
    assert "remove /p/n1/eth0" in error and "SIGTERM" in error


def test_the_ownership_pin_from_before_handover_is_migrated_not_refused():
    """vf_owner's value grew from one u64 (owned bits) to struct vf_bits (owned, moving): that
    exact change is copied over by the agent (pinned_layout.migrate), so an upgrade keeps serving."""
    from nodeagent.pinned_layout import migratable
    new_owner = Shape(map_type=2, key_size=4, value_size=16, max_entries=65536)
    old = mismatch("vf_owner", "/p/n1/eth0/vf_owner", new_owner, OWNER)
    assert old.differences == "value_size pinned=8 declared=16"
    assert migratable(old) and unusable([old]) is None
    other = mismatch("vf_owner", "/p/n1/eth0/vf_owner", new_owner, Shape(2, 4, 8, 1024))
    assert not migratable(other)
    assert "/p/n1/eth0/vf_owner: value_size pinned=8 declared=16, max_entries pinned=1024" in unusable([other])


def test_the_udp_handover_maps_of_another_shape_may_be_recreated_and_say_what_is_lost():
    """Losing the UDP flow table or the UDP settings only ends the UDP handovers in progress."""
    from nodeagent.pinned_layout import LOST_ON_RECREATION, RECREATABLE
    flows = Shape(map_type=9, key_size=44, value_size=16, max_entries=65536)
    found = [mismatch("vf_udp_flows", "/p/n1/eth0/vf_udp_flows", flows, Shape(9, 40, 16, 65536)),
             mismatch("vf_udp_farm", "/p/n1/eth0/vf_udp_farm", Shape(2, 4, 16, 32), Shape(2, 4, 8, 32))]
    assert unusable(found) is None
    assert LOST_ON_RECREATION["vf_udp_flows"] == "udp_flows" and LOST_ON_RECREATION["vf_udp_farm"] == "udp_config"
    assert set(LOST_ON_RECREATION) == RECREATABLE
