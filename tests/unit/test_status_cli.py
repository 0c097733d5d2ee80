"""`vipfarm status` in standalone mode, run as a process against real local HTTP servers that
answer GET /status with contract documents (tests/support/status_docs.py): one agent,
several, a dead one; the exit codes; the mode rule; whom --farm-file asks (asking them in
a lab is tests/lab/test_status_cli_lab.py)."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from nodeagent.status_cli import CLUSTER, STANDALONE, UsageError, agent_addresses, choose_mode, parse
from tests.support.status_docs import StatusServer, dead_address, farm_entry, member, status_document

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MEMBERS = [member("n1", "198.51.100.1"), member("n2", "198.51.100.2"),
           member("n3", "198.51.100.3", state="Out", reason="HeartbeatTimeout", last_heard_ms=None)]
FAILOVER = {"at": "2026-12-02T10:00:00Z", "lost": ["n3"], "durationMs": 412}


def vipfarm(*args, home):
    """The CLI as a user runs it, with no kubeconfig or in-cluster credentials around."""
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "nodeagent.cli", "status", *args], capture_output=True, text=True,
                          timeout=60, env=env, cwd=REPO)


def agent_doc(node, accepted, *farms_extra):
    web = farm_entry("web", node=node, members=MEMBERS, counters={"accepted": accepted}, last_failover=FAILOVER)
    return status_document(node, [web, *farms_extra])


def rows(stdout):
    return {line.split()[0]: line.split() for line in stdout.splitlines()[2:] if line.strip()}


def test_one_agent_prints_its_farm_and_exits_0(tmp_path):
    with StatusServer(agent_doc("n1", 1200)) as n1:
        res = vipfarm("--agent", n1.address, home=tmp_path)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Farm web: VIPs 203.0.113.10; view 2/3 agreed, epoch 3 (as n1 sees it); last failover ")
    assert lines[0].endswith(" ago: n3 lost, 412 ms")
    assert lines[1].split() == ["NAME", "STATE", "REASON", "WEIGHT", "BUCKETS", "PACKETS", "LAST-HEARD"]
    r = rows(res.stdout)
    assert r["n1"] == ["n1", "Serving", "-", "1", "8", "(50%)", "1200", "self"]
    assert r["n2"] == ["n2", "Serving", "-", "1", "8", "(50%)", "-", "12ms"]          # its agent was not asked
    assert r["n3"] == ["n3", "Out", "HeartbeatTimeout", "1", "0", "(0%)", "-", "-"]


def test_several_agents_merge_each_member_gets_its_own_packets_and_json_is_the_views(tmp_path):
    db = farm_entry("db", node="n2", members=MEMBERS[:2], vips=("203.0.113.20",))
    with StatusServer(agent_doc("n1", 1200)) as n1, StatusServer(agent_doc("n2", 3400, db)) as n2:
        table = vipfarm("--agent", n1.address, "--agent", f"http://{n2.address}", home=tmp_path)
        listed = vipfarm("--agent", n1.address, "--agent", n2.address, "-o", "json", home=tmp_path)
        named = vipfarm("web", "--agent", n1.address, "--agent", n2.address, "-o", "json", home=tmp_path)
    assert table.returncode == 0 and table.stderr == "", table.stderr
    dbt, web = table.stdout.split("\n\n")
    assert dbt.startswith("Farm db: VIPs 203.0.113.20;")
    assert rows(web)["n1"][6] == "1200" and rows(web)["n2"][6] == "3400" and rows(web)["n3"][6] == "-"
    views = json.loads(listed.stdout)
    assert [v["name"] for v in views] == ["db", "web"] and listed.returncode == 0
    by = {m["name"]: m for m in views[1]["members"]}
    assert by["n1"]["local"]["counters"]["accepted"] == 1200 and by["n3"]["local"] is None
    assert views[1]["owners"].count("n1") == 8 and len(views[1]["owners"]) == 16
    one = json.loads(named.stdout)
    assert isinstance(one, dict) and one["name"] == "web" and one == views[1]


def test_a_dead_agent_is_named_on_stderr_the_others_still_print_and_the_exit_code_is_1(tmp_path):
    dead = dead_address()
    with StatusServer(agent_doc("n1", 1200)) as n1:
        res = vipfarm("--agent", n1.address, "--agent", dead, "-o", "wide", home=tmp_path)
    assert res.returncode == 1
    assert f"error: http://{dead}/status:" in res.stderr and "--observe-address" in res.stderr
    assert res.stdout.startswith("Farm web:") and rows(res.stdout)["n1"][6] == "1200"
    assert rows(res.stdout)["n1"][8:] == ["198.51.100.1", "0", "0", "-"]


def test_no_agent_answering_is_exit_1_with_nothing_on_stdout(tmp_path):
    dead = [dead_address(), dead_address()]
    res = vipfarm("--agent", dead[0], "--agent", dead[1], home=tmp_path)
    assert res.returncode == 1 and res.stdout == ""
    assert all(f"http://{d}/status" in res.stderr for d in dead)
    assert f"error: no agent answered (asked {dead[0]}, {dead[1]})" in res.stderr


def test_a_farm_no_agent_serves_is_exit_1_and_a_usage_error_exit_2(tmp_path):
    with StatusServer(agent_doc("n1", 1200)) as n1:
        res = vipfarm("nosuch", "--agent", n1.address, home=tmp_path)
        bad = vipfarm("--agent", "no-port-here", home=tmp_path)
        both = vipfarm("--agent", n1.address, "--cluster", home=tmp_path)
    assert res.returncode == 1 and res.stdout == ""
    assert 'error: farm "nosuch" not found: no agent that answered serves it (answered: n1)' in res.stderr
    assert bad.returncode == 2 and "expected HOST:PORT" in bad.stderr and bad.stdout == ""
    assert both.returncode == 2 and "exclude each other" in both.stderr


def test_without_flags_or_credentials_it_asks_the_local_agent(tmp_path):
    res = vipfarm("--timeout", "1", home=tmp_path)
    # Nothing serves 127.0.0.1:9478 here (the test would be wrong if an agent did).
    assert res.returncode == 1 and "http://127.0.0.1:9478/status" in res.stderr


def test_the_mode_rule():
    def mode(*argv, env=None, files=()):
        return choose_mode(parse(list(argv)), env or {"HOME": "/home/u"}, exists=lambda p: p in files)
    assert mode() == STANDALONE
    assert mode(files=["/home/u/.kube/config"]) == CLUSTER
    assert mode(env={"KUBECONFIG": "/a:/b", "HOME": "/h"}, files=["/b"]) == CLUSTER
    assert mode(env={"KUBECONFIG": "/a", "HOME": "/h"}, files=["/h/.kube/config"]) == STANDALONE   # as kubectl: KUBECONFIG wins
    assert mode(env={"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
                files=["/var/run/secrets/kubernetes.io/serviceaccount/token"]) == CLUSTER
    assert mode("--agent", "h:1", files=["/home/u/.kube/config"]) == STANDALONE
    assert mode("--kubeconfig", "/k") == CLUSTER and mode("--cluster") == CLUSTER
    with pytest.raises(UsageError):
        mode("--farm-file", "f", "--kubeconfig", "k")


def test_a_farm_file_names_every_member_at_the_observe_port(tmp_path):
    f = tmp_path / "farm.yaml"
    f.write_text(textwrap.dedent("""\
        apiVersion: vipfarm.io/v1alpha1
        kind: Farm
        metadata: {name: web}
        spec:
          virtualIPs: ["203.0.113.10"]
          nodes:
            - {name: n1, address: 198.51.100.1}
            - {name: n2, address: "2001:db8::2"}
        """))
    assert agent_addresses(parse(["--farm-file", str(f)])) == ["198.51.100.1:9478", "[2001:db8::2]:9478"]
    assert agent_addresses(parse(["--farm-file", str(f), "--observe-port", "9000", "--agent", "198.51.100.1:9000"])) \
        == ["198.51.100.1:9000", "[2001:db8::2]:9000"]
    with pytest.raises(UsageError, match="nope.yaml"):
        agent_addresses(parse(["--farm-file", str(tmp_path / "nope.yaml")]))


def test_agents_serving_no_farm_say_so_and_exit_0_and_another_schema_is_an_error_naming_the_agent(tmp_path):
    with StatusServer(status_document("n1", [])) as n1, StatusServer({"schemaVersion": 2, "node": "n2", "farms": []}) as n2:
        empty = vipfarm("--agent", n1.address, home=tmp_path)
        as_json = vipfarm("--agent", n1.address, "-o", "json", home=tmp_path)
        newer = vipfarm("--agent", n1.address, "--agent", n2.address, home=tmp_path)
    assert empty.returncode == 0 and empty.stdout == "" and "No farms found" in empty.stderr
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == []
    assert newer.returncode == 1 and f"http://{n2.address}/status: /status schemaVersion is 2" in newer.stderr
