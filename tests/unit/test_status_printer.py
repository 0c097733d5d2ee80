"""`vipfarm status` output: the header line, the columns and their values, wide, json and yaml."""
import datetime
import json
import re

import yaml

from vipfarm.assignment import Member, assign
from vipfarm.farm_status import assignment_status
from vipfarm.status_printer import COLUMNS, WIDE_COLUMNS, human_age, render
from vipfarm.status_view import farm_view_from_resource, merge_agent_statuses
from tests.support.status_docs import farm_entry, member, status_document

NOW = datetime.datetime(2026, 12, 2, 10, 2, 0, tzinfo=datetime.timezone.utc)
FAILOVER = {"at": "2026-12-02T10:00:00Z", "lost": ["n3"], "durationMs": 412}


def standalone_views():
    ms = [member("n1", "198.51.100.1"), member("n2", "198.51.100.2", weight=3, last_heard_ms=40),
          member("n3", "198.51.100.3", state="Out", reason="HeartbeatTimeout", last_heard_ms=125_000)]
    checks = [{"name": "http", "state": "Passing", "lastRun": "2026-12-02T10:01:59Z", "recoveryRuns": 0},
              {"name": "db", "state": "Failing", "lastRun": "2026-12-02T10:01:59Z", "recoveryRuns": 1}]
    one = farm_entry("web", node="n1", members=ms, vips=("203.0.113.10", "2001:db8::10"), counters={"accepted": 1200, "dropped": 7},
                     checks=checks, flows_left=3, last_failover=FAILOVER)
    two = farm_entry("web", node="n2", members=ms, vips=("203.0.113.10", "2001:db8::10"), counters={"accepted": 3400})
    return merge_agent_statuses([status_document("n1", [one]), status_document("n2", [two])])


def table(text):
    """The header line, then the rows as lists of cells (columns are 3+ spaces apart)."""
    lines = text.rstrip("\n").split("\n")
    return lines[0], [re.split(r"\s{3,}", line.strip()) for line in lines[1:]]


def test_the_table_has_a_header_line_and_one_row_per_member_with_its_own_agents_packets():
    header, rows = table(render(standalone_views(), "table", NOW))
    assert header == ("Farm web: VIPs 203.0.113.10, 2001:db8::10; view 2/3 agreed, epoch 3 (as n2 sees it); "
                      "last failover 2m ago: n3 lost, 412 ms")
    assert tuple(rows[0]) == COLUMNS
    # 16 buckets dealt by weight over n1 (1) and n2 (3): 4 and 12.
    assert rows[1:] == [["n1", "Serving", "-", "1", "4 (25%)", "1200", "12ms"],
                        ["n2", "Serving", "-", "3", "12 (75%)", "3400", "self"],
                        ["n3", "Out", "HeartbeatTimeout", "1", "0 (0%)", "-", "2m"]]


def test_wide_adds_address_dropped_handover_flows_left_and_checks():
    _, rows = table(render(standalone_views(), "wide", NOW))
    assert tuple(rows[0]) == WIDE_COLUMNS
    assert rows[1][7:] == ["198.51.100.1", "7", "3", "http=Passing,db=Failing"]
    assert rows[2][7:] == ["198.51.100.2", "0", "0", "-"]
    assert rows[3][7:] == ["198.51.100.3", "-", "-", "-"]      # n3's agent did not answer


def test_a_cluster_view_prints_its_phase_and_the_age_of_each_agents_report():
    a = assign(None, [Member("n1"), Member("n2")], 8)
    farm = {"metadata": {"name": "db"}, "spec": {"virtualIPs": ["203.0.113.20"], "buckets": 8},
            "status": {"phase": "Ready", "epoch": 2, "assignment": assignment_status(a, 2),
                       "members": [{"node": "n1", "ready": True, "buckets": 4},
                                   {"node": "n2", "ready": True, "buckets": 4}]}}
    nodes = [{"metadata": {"name": "n1"}, "status": {"reportedAt": "2026-12-02T10:01:15Z", "farms": {"db": {"ready": True}}}}]
    header, rows = table(render([farm_view_from_resource(farm, nodes)], "table", NOW))
    assert header == "Farm db: VIPs 203.0.113.20; phase Ready; view 2/2 not agreed, epoch 2; no failover seen"
    assert rows[1] == ["n1", "Serving", "-", "1", "4 (50%)", "-", "45s"]
    assert rows[2] == ["n2", "Serving", "-", "1", "4 (50%)", "-", "-"]


def test_several_farms_are_separated_by_a_blank_line():
    views = standalone_views() * 2
    text = render(views, "table", NOW)
    assert text.count("Farm web:") == 2 and "\n\nFarm web:" in text


def test_json_and_yaml_print_the_views_a_list_or_one_object_when_a_farm_was_named():
    views = standalone_views()
    assert json.loads(render(views, "json", NOW)) == views
    assert yaml.safe_load(render(views, "yaml", NOW)) == views
    assert json.loads(render(views, "json", NOW, single=True)) == views[0]
    assert yaml.safe_load(render(views, "yaml", NOW, single=True)) == views[0]
    assert json.loads(render([], "json", NOW)) == []


def test_ages_are_milliseconds_under_a_second_then_kubectl_units():
    assert [human_age(ms) for ms in (0, 12, 999, 1500, 45_000, 125_000, 3_600_000 * 2, 3_600_000 * 5, 86_400_000 * 3)] \
        == ["0ms", "12ms", "999ms", "1.5s", "45s", "2m", "120m", "5h", "3d"]
