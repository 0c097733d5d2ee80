"""The web console's server (nodeagent/console.py) over real HTTP: the page, the JSON it polls,
the actions (403 unless --allow-actions; refused in standalone mode), and `vipfarm console`."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest

from nodeagent.cli import console_drain_action, main
from nodeagent.console import (ActionResult, ActionsUnavailable, Console, ConsoleSource, make_server,
                               standalone_source)
from nodeagent.status_cli import agent_addresses
from vipfarm.listen_address import parse_listen_address
from tests.support.status_docs import StatusServer, dead_address, farm_entry, member, status_document

NODES = ("n1", "n2", "n3")
OWNERS = [NODES[b % 3] for b in range(16)]


def docs(accepted=0):
    members = [member(m, f"198.51.100.{i}") for i, m in enumerate(NODES, 1)]
    return {n: status_document(n, [farm_entry("web", node=n, members=members, owners=OWNERS,
                                              counters={"accepted": accepted + k})])
            for k, n in enumerate(NODES)}


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def serve(console):
    server = make_server(console, "127.0.0.1:0")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def running():
    servers = []

    def start(console):
        servers.append(serve(console))
        return servers[-1].url
    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.status, dict(r.headers), r.read()


def post(url, body, content_type="application/json", headers=None):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": content_type, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class CountingSource:
    """A source of fixed views that records the drains asked of it (a cluster source's shape)."""

    def __init__(self):
        self.asked = []
        self.fetches = 0

    def source(self, *, can_act=True):
        def fetch():
            self.fetches += 1
            from vipfarm.status_view import merge_agent_statuses
            return merge_agent_statuses(docs().values()), []

        def set_drain(node, drain):
            self.asked.append((node, drain))
            return ActionResult(True, f"node/{node} {'draining' if drain else 'undrained'}")
        return ConsoleSource("cluster", fetch, "fixed views", set_drain if can_act else None, "cannot act")


def test_the_page_is_one_self_contained_document_whose_scripts_only_run_by_hash(running):
    url = running(Console(CountingSource().source()))
    status, headers, body = get(url)
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    page = body.decode()
    assert "<title>vipfarm console</title>" in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page), "the page loads nothing from elsewhere"
    csp = headers["Content-Security-Policy"]
    assert csp.startswith("default-src 'none'; script-src 'sha256-") and "style-src 'sha256-" in csp
    assert "connect-src 'self'" in csp and "unsafe-inline" not in csp
    # Values go in as text and attributes: nothing in the page's script parses markup.
    script = page[page.index("<script>"):]
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)


def test_api_farms_answers_the_merged_agents_with_colours_rates_and_the_dead_agent_as_an_error_line(running):
    agents = {n: StatusServer(d) for n, d in docs(accepted=1000).items()}
    dead = dead_address()
    clock = Clock()
    try:
        url = running(Console(standalone_source([a.address for a in agents.values()] + [dead]),
                              min_interval=0.4, clock=clock))
        status, headers, body = get(url + "api/farms")
        assert status == 200 and headers["Content-Type"] == "application/json"
        doc = json.loads(body)
        assert (doc["mode"], doc["actions"]) == ("standalone", False)
        assert len(doc["errors"]) == 1 and dead in doc["errors"][0]
        [farm] = doc["farms"]
        assert farm["owners"] == OWNERS
        assert [(e["owner"], e["buckets"]) for e in farm["legend"]] == [("n1", 6), ("n2", 5), ("n3", 5)]
        assert [m["packetsPerSecond"] for m in farm["members"]] == [None, None, None]   # one sample so far
        for n, d in docs(accepted=1100).items():
            agents[n].doc = d
        clock.t += 0.2
        assert json.loads(get(url + "api/farms")[2]) == doc          # within min_interval: the same answer
        clock.t += 0.3
        farm = json.loads(get(url + "api/farms")[2])["farms"][0]
        assert [m["packetsPerSecond"] for m in farm["members"]] == [200.0, 200.0, 200.0]
        assert [m["accepted"] for m in farm["members"]] == [1100, 1101, 1102]
    finally:
        for a in agents.values():
            a.close()


def test_other_paths_are_404(running):
    url = running(Console(CountingSource().source()))
    with pytest.raises(urllib.error.HTTPError) as e:
        get(url + "etc/passwd")
    assert e.value.code == 404
    assert post(url + "api/reboot", {"node": "n1"})[0] == 404


@pytest.mark.parametrize("verb", ["drain", "undrain"])
def test_actions_are_403_without_allow_actions_even_from_a_source_that_could(running, verb):
    counting = CountingSource()
    url = running(Console(counting.source(can_act=True), allow_actions=False))
    assert json.loads(get(url + "api/farms")[2])["actions"] is False
    status, body = post(url + f"api/{verb}", {"node": "n2"})
    assert status == 403 and "--allow-actions" in body["message"] and body["ok"] is False
    assert counting.asked == []


def test_with_allow_actions_a_drain_reaches_the_source_for_known_members_only(running):
    counting = CountingSource()
    url = running(Console(counting.source(), allow_actions=True))
    assert json.loads(get(url + "api/farms")[2])["actions"] is True
    assert post(url + "api/drain", {"node": "n2"}) == (200, {"ok": True, "message": "node/n2 draining"})
    assert post(url + "api/undrain", {"node": "n2"})[0] == 200
    status, body = post(url + "api/drain", {"node": "n7"})
    assert status == 404 and "n1, n2, n3" in body["message"]
    assert post(url + "api/drain", {"node": "n1"}, content_type="text/plain")[0] == 415     # a form can't act
    assert post(url + "api/drain", {"node": "n1"}, headers={"Origin": "http://evil.example"})[0] == 403
    assert post(url + "api/drain", ["n1"])[0] == 400
    assert counting.asked == [("n2", True), ("n2", False)]


def test_allow_actions_is_refused_for_a_source_that_cannot_act():
    with pytest.raises(ActionsUnavailable, match="refused in standalone mode: in standalone mode the farm file is the truth"):
        Console(standalone_source(["127.0.0.1:1"]), allow_actions=True)


def test_vipfarm_console_refuses_allow_actions_in_standalone_mode_naming_why(capsys):
    assert main(["console", "--agent", "127.0.0.1:1", "--allow-actions"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vipfarm console: --allow-actions is refused in standalone mode")
    assert "spec.nodes[].drain: true" in err and "without --allow-actions" in err


def test_the_cluster_action_is_the_drain_command(tmp_path, monkeypatch):
    """console_drain_action runs `vipfarm drain`'s own code: without credentials it fails as the
    command does, and says what the command says."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such.kubeconfig"))
    result = console_drain_action(timeout=1)("worker-1", True)
    assert result.ok is False
    assert result.message.startswith("error: vipfarm drain worker-1: cannot reach the Kubernetes API")


def test_farm_files_name_every_member_at_the_observe_port(tmp_path):
    f = tmp_path / "web.yaml"
    f.write_text("apiVersion: vipfarm.io/v1alpha1\nkind: Farm\nmetadata: {name: web}\nspec:\n"
                 "  virtualIPs: [203.0.113.10]\n  nodes:\n"
                 "    - {name: n1, address: 198.51.100.1}\n    - {name: n2, address: '2001:db8:1::2'}\n")
    args = argparse.Namespace(agent=["198.51.100.1:9478"], farm_file=[str(f), str(f)], observe_port=9478)
    assert agent_addresses(args) == ["198.51.100.1:9478", "[2001:db8:1::2]:9478"]
    assert agent_addresses(argparse.Namespace(agent=[], farm_file=[], observe_port=9478)) == ["http://127.0.0.1:9478"]


def test_listen_addresses():
    assert parse_listen_address("127.0.0.1:9480", "--listen", lowest_port=0) == ("127.0.0.1", 9480)
    assert parse_listen_address("[::1]:0", "--listen", lowest_port=0) == ("::1", 0)
    with pytest.raises(ValueError, match="give --listen HOST:PORT"):
        parse_listen_address("9480", "--listen", lowest_port=0)


def test_vipfarm_console_serves_until_sigterm(tmp_path):
    with StatusServer(docs()["n1"]) as agent:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        p = subprocess.Popen([sys.executable, "-m", "nodeagent.cli", "console", "--listen", "127.0.0.1:0",
                              "--agent", agent.address], stderr=subprocess.PIPE, text=True, env=env)
        try:
            line = p.stderr.readline()
            m = re.search(r"event=console_listening url=(\S+) mode=standalone actions=off", line)
            assert m, line
            doc = json.loads(get(m.group(1) + "api/farms")[2])
            assert [f["name"] for f in doc["farms"]] == ["web"] and doc["errors"] == []
            p.send_signal(signal.SIGTERM)
            assert p.wait(timeout=10) == 0
        finally:
            p.kill()
            p.wait()
