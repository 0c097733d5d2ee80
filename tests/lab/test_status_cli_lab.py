"""Lab tier: `vipfarm status --farm-file F` asks every member at its address on the farm
network. Each lab node namespace runs a stand-in agent (tests/support/status_docs.py serving
a contract /status document on the node's address and the observe port) except n3, whose
"agent" is down; the CLI runs in the client namespace as an operator's shell would."""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from nodeagent.lab.namespaces import Lab, node_ip
from tests.support.status_docs import farm_entry, member, status_document

pytestmark = pytest.mark.lab
PORT = 9478


def test_a_farm_file_asks_each_member_at_its_address_and_names_the_one_that_is_down():
    with Lab(nodes=3, clients=1) as lab:
        farm = lab.write_farm("web", "\n".join([
            "apiVersion: vipfarm.io/v1alpha1", "kind: Farm", "metadata: {name: web}", "spec:",
            '  virtualIPs: ["203.0.113.10"]', "  nodes:",
            *(f"    - {{name: n{k}, address: {node_ip(k)}}}" for k in (1, 2, 3))]) + "\n")
        members = [member(f"n{k}", node_ip(k)) for k in (1, 2, 3)]
        for k, accepted in ((1, 10), (2, 20)):
            path = os.path.join(lab.workdir, f"status-n{k}.json")
            with open(path, "w") as f:
                json.dump(status_document(f"n{k}", [farm_entry("web", node=f"n{k}", members=members,
                                                              counters={"accepted": accepted})]), f)
            lab.spawn(lab.node(k), [sys.executable, "-m", "tests.support.status_docs", node_ip(k), str(PORT), path],
                      log_name=f"status-n{k}.log")
        for k in (1, 2):        # until each stand-in listens (its log line), bounded
            deadline = time.monotonic() + 30
            while "serving /status" not in lab.log(f"status-n{k}.log"):
                assert time.monotonic() < deadline, lab.log(f"status-n{k}.log")
                time.sleep(0.1)
        res = lab.python(lab.client, "nodeagent.cli", "status", "--farm-file", farm, "--timeout", "2", "-o", "json",
                         check=False)
        table = lab.python(lab.client, "nodeagent.cli", "status", "--farm-file", farm, "--timeout", "2", check=False)
    assert res.returncode == 1                      # n3 did not answer: named, and the rest printed
    assert f"error: http://{node_ip(3)}:{PORT}/status:" in res.stderr
    assert node_ip(1) not in res.stderr and node_ip(2) not in res.stderr
    [web] = json.loads(res.stdout)
    by = {m["name"]: m for m in web["members"]}
    assert by["n1"]["local"]["counters"]["accepted"] == 10 and by["n2"]["local"]["counters"]["accepted"] == 20
    assert by["n3"]["local"] is None
    rows = {line.split()[0]: line.split() for line in table.stdout.splitlines()[2:]}
    assert [rows[n][6] for n in ("n1", "n2", "n3")] == ["10", "20", "-"] and table.returncode == 1
