"""The chart ships the CRDs of the top-level crds/ (the source of truth), byte for byte, in
charts/vipfarm/files/crds/, which templates/crds.yaml renders (so they upgrade with the chart)."""
from __future__ import annotations

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOP, CHART = os.path.join(REPO, "crds"), os.path.join(REPO, "charts", "vipfarm", "files", "crds")


def test_the_chart_crds_are_the_top_level_crds():
    assert sorted(os.listdir(TOP)) == sorted(os.listdir(CHART))
    assert "farmnodes.vipfarm.io.yaml" in os.listdir(TOP)
    for name in os.listdir(TOP):
        with open(os.path.join(TOP, name), "rb") as a, open(os.path.join(CHART, name), "rb") as b:
            assert a.read() == b.read(), f"charts/vipfarm/files/crds/{name} differs: cp crds/*.yaml charts/vipfarm/files/crds/"
