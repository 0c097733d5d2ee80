"""bench/handover.py's report: each move's figure with handover on beside its baseline with
handover off from the same run, and min–max over the trials."""
from __future__ import annotations

import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _bench():
    spec = importlib.util.spec_from_file_location("bench_handover", os.path.join(ROOT, "bench", "handover.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod             # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_the_table_puts_the_handover_off_baseline_under_each_figure_with_min_max_over_trials():
    b = _bench()
    cases = []
    for trial, (reset_off, balance) in enumerate([(49, 60.0), (57, 80.0)], start=1):
        cases.append(b.Case(trial, "weight", 200, True, 100.0, held=200, balance_ms=balance))
        cases.append(b.Case(trial, "weight", 200, False, 100.0, held=200, reset=reset_off, broken=reset_off,
                            balance_ms=balance))
    rows = b.table(cases, 2).splitlines()
    on = [r for r in rows if "**on**" in r]
    off = [r for r in rows if "plain rehash" in r]
    assert len(on) == len(off) == 1, rows
    assert rows.index(off[0]) == rows.index(on[0]) + 1, rows
    cells_on, cells_off = on[0].split(" | "), off[0].split(" | ")
    header = rows[0].split(" | ")
    reset, balance = header.index("reset"), header.index("balance ms")
    assert (cells_on[reset], cells_off[reset]) == ("0", "49–57"), rows
    assert cells_on[balance] == "60–80", rows
    assert "min–max over the trials" in rows[-1], rows


def test_a_move_that_never_balanced_shows_never_beside_the_trials_that_did():
    b = _bench()
    assert b.span([None, 62.0, 80.0]) == "62–80 (+never)"
    assert b.span([None]) == "never"
    assert b.span([0, 0]) == "0"
    assert b.span([1.2, 1.4]) == "1", "equal as printed: one value, not 1–1"
    assert b.span([1.2, 1.4], ".1f") == "1.2–1.4"
