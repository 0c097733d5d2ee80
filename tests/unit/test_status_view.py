import http.server
import json
import threading

import pytest

from nodeagent.status_client import StatusUnavailable, fetch_all, fetch_status, status_url
from vipfarm.status_view import StatusFormatError, check_status, merge_agent_statuses, owner_shares


def farm(node_view, agreed=True, epoch=3, owners=("n1", "n2", "n3", None), **local):
    return {"name": "web", "vips": ["203.0.113.10"], "buckets": len(owners), "view": list(node_view),
            "agreed": agreed, "baseEpoch": epoch,
            "members": [{"name": n, "state": "Serving", "buckets": owners.count(n)} for n in ("n1", "n2", "n3")],
            "owners": list(owners), "lastFailover": local.pop("lastFailover", None),
            "events": local.pop("events", []), **local}


def doc(node, *farms):
    return {"schemaVersion": 1, "node": node, "mode": "standalone", "ready": True, "farms": list(farms)}


def test_the_agreed_newest_answer_gives_the_farm_wide_part_and_each_member_its_own_local_part():
    stale = doc("n1", farm(["n1"], agreed=False, epoch=4, owners=("n1", "n1", "n1", "n1"), ownedBuckets=4))
    good = doc("n2", farm(["n1", "n2", "n3"], ownedBuckets=1, counters={"accepted": 7}))
    for order in ([stale, good], [good, stale]):
        [v] = merge_agent_statuses(order)
        assert v["reportedBy"] == "n2" and v["owners"] == ["n1", "n2", "n3", None]
        by = {m["name"]: m for m in v["members"]}
        assert by["n1"]["local"] == {"ownedBuckets": 4}
        assert by["n2"]["local"] == {"ownedBuckets": 1, "counters": {"accepted": 7}}
        assert by["n3"]["local"] is None                       # its agent was not asked
    assert owner_shares(v) == {"n1": 1, "n2": 1, "n3": 1, None: 1}


def test_events_are_the_union_oldest_first_and_the_last_failover_the_newest():
    a = {"at": "2026-12-02T10:00:00Z", "kind": "Failover", "nodes": ["n3"], "durationMs": 300}
    b = {"at": "2026-12-02T10:05:00Z", "kind": "Rejoin", "nodes": ["n3"], "durationMs": None}
    one = doc("n1", farm(["n1", "n2"], events=[a], lastFailover=a))
    two = doc("n2", farm(["n1", "n2"], events=[b, a], lastFailover=a))
    [v] = merge_agent_statuses([one, two])
    assert v["events"] == [a, b] and v["lastFailover"] == a
    assert merge_agent_statuses([one, two], only_farm="other") == []


def test_an_answer_of_another_schema_is_refused_naming_the_source():
    with pytest.raises(StatusFormatError, match="http://x/status: /status schemaVersion is 2"):
        check_status({"schemaVersion": 2, "node": "n1", "farms": []}, "http://x/status")
    with pytest.raises(StatusFormatError, match="without a name"):
        check_status({"schemaVersion": 1, "node": "n1", "farms": [{}]}, "s")


def test_status_url_accepts_host_port_and_urls():
    assert status_url("198.51.100.1:9478") == "http://198.51.100.1:9478/status"
    assert status_url("http://h:1/") == "http://h:1/status" and status_url("http://h:1/status") == "http://h:1/status"


def test_fetch_reads_a_real_server_and_reports_a_dead_one_as_an_error_line():
    body = json.dumps(doc("n1", farm(["n1"]))).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = 200 if self.path == "/status" else 404
            self.send_response(code)
            self.end_headers()
            self.wfile.write(body if code == 200 else b"no")

        def log_message(self, *a):
            pass
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        port = srv.server_address[1]
        assert fetch_status(f"127.0.0.1:{port}")["node"] == "n1"
        with pytest.raises(StatusUnavailable, match="HTTP 404"):
            fetch_status(f"http://127.0.0.1:{port}/other")
        srv_dead = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        dead = srv_dead.server_address[1]
        srv_dead.server_close()
        got = fetch_all([f"127.0.0.1:{port}", f"127.0.0.1:{dead}"], timeout=1)
        assert [s["node"] for s in got.statuses] == ["n1"]
        assert len(got.errors) == 1 and f"127.0.0.1:{dead}/status" in got.errors[0] and "--observe-address" in got.errors[0]
    finally:
        srv.shutdown()
        srv.server_close()
