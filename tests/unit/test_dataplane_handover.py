"""Programming the handover state (moving buckets) through InterfaceDataplane.apply(): the
moving set travels with the owned set into one table swap per farm (FilterTables.write_farm
writes both into the idle half, then flips), on the same cheap path as an ownership change."""
from __future__ import annotations

import pytest

from nodeagent.dataplane import InterfaceDataplane
from nodeagent.filter_plan import FarmOwnership, build_plan
from tests.unit.test_dataplane_lease import WEB, DNS, quiet_host


class SwapRecordingTables:
    def __init__(self):
        self.swaps: list[tuple[str, frozenset[int], frozenset[int]]] = []
        self.full_rewrites = 0

    def apply(self, plan, previous_slots):
        self.full_rewrites += 1

    def write_farm(self, f):
        self.swaps.append((f.name, f.owned, f.moving))


@pytest.fixture
def dp(tmp_path, monkeypatch):
    quiet_host(monkeypatch)
    d = InterfaceDataplane("n1", "eth0", "auto", str(tmp_path / "pins"), str(tmp_path / "state"))
    d.tables = SwapRecordingTables()
    d.apply([FarmOwnership(WEB, frozenset({1, 2})), FarmOwnership(DNS, frozenset({3}))])
    assert d.tables.full_rewrites == 1
    return d


def test_a_change_of_moving_buckets_alone_is_one_table_swap_of_that_farm(dp):
    plan = dp.apply([FarmOwnership(WEB, frozenset({1, 2}), frozenset({2, 5})), FarmOwnership(DNS, frozenset({3}))])
    assert dp.tables.swaps == [("web", frozenset({1, 2}), frozenset({2, 5}))]
    assert dp.tables.full_rewrites == 1, "a handover-only change rewrote the VIPs and farms"
    assert plan.farm_by_slot()[dp.state.slots["web"]].moving == frozenset({2, 5})


def test_owned_and_moving_changing_together_are_written_in_the_same_swap(dp):
    dp.apply([FarmOwnership(WEB, frozenset({1}), frozenset({2})), FarmOwnership(DNS, frozenset({3}))])
    dp.apply([FarmOwnership(WEB, frozenset({1}), frozenset({2})), FarmOwnership(DNS, frozenset({3}))])
    dp.apply([FarmOwnership(WEB, frozenset({1}), frozenset()), FarmOwnership(DNS, frozenset({3}))])
    assert dp.tables.swaps == [("web", frozenset({1}), frozenset({2})), ("web", frozenset({1}), frozenset())]


def test_moving_buckets_outside_the_farm_are_refused_before_anything_is_written(dp):
    with pytest.raises(ValueError, match=r"farm 'web': moving bucket 16 is outside 0..15 \(2 such\)"):
        dp.apply([FarmOwnership(WEB, frozenset({1}), frozenset({3, 16, 40})), FarmOwnership(DNS, frozenset({3}))])
    assert dp.tables.swaps == [] and dp.tables.full_rewrites == 1
    with pytest.raises(ValueError, match="moving bucket 16"):
        build_plan([FarmOwnership(WEB, frozenset(), frozenset({16}))], {"web": 0})
