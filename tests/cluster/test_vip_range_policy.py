"""Cluster tier: the ValidatingAdmissionPolicy the README offers for restricting Farm VIPs to
the ranges handed to farms ("Security model") works on the real API server: a Farm with a VIP
outside them is refused with the policy's message, one inside is accepted.

The policy is taken from the README's yaml block itself, so the documented text is what runs.
The test adds one match condition (only Farms named vip-range-*), so the other tests of the
session, whose Farms use other addresses, are not affected while it is installed.
"""
from __future__ import annotations

import copy
import json
import os
import re
import time

import pytest
import yaml

from tests.support.apiserver import REPO

pytestmark = pytest.mark.cluster


def _readme_policy() -> list[dict]:
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("## Security model", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block, "README.md, Security model: the VIP range policy's yaml block is missing"
    docs = [d for d in yaml.safe_load_all(re.sub(r"(?m)^  ", "", block.group(1))) if d]
    assert [d["kind"] for d in docs] == ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]
    return docs


def _farm(name: str, vip: str) -> str:
    return json.dumps({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
                       "spec": {"virtualIPs": [vip], "nodeSelector": {"vipfarm.io/member": "true"}}})


@pytest.fixture
def vip_policy(apiserver):
    apiserver.kubectl("apply", "-f", os.path.join(REPO, "crds"))
    apiserver.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "--timeout=60s")
    policy, binding = copy.deepcopy(_readme_policy())
    policy["spec"]["matchConditions"].append({"name": "only-this-test", "expression":
                                              "object.metadata.name.startsWith('vip-range-')"})
    apiserver.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                             "items": [policy, binding]}))
    try:
        yield apiserver
    finally:
        apiserver.kubectl("delete", "validatingadmissionpolicybinding", binding["metadata"]["name"], "--ignore-not-found")
        apiserver.kubectl("delete", "validatingadmissionpolicy", policy["metadata"]["name"], "--ignore-not-found")


def test_the_readme_policy_refuses_a_farm_vip_outside_the_allowed_ranges(vip_policy):
    outside = _farm("vip-range-outside", "198.51.100.10")
    deadline = time.monotonic() + 30      # the API server loads a new policy within seconds
    while True:
        res = vip_policy.kubectl("apply", "--dry-run=server", "-f", "-", input=outside, check=False)
        if res.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert res.returncode != 0, f"the policy did not refuse a VIP outside the ranges within 30 s: {res.stdout}"
    assert "every virtual IP must be in 203.0.113.0/24 or 2001:db8:100::/64; got 198.51.100.10" in res.stderr, res.stderr
    assert "vipfarm-vip-ranges" in res.stderr, res.stderr
    for name, vip in (("vip-range-v4", "203.0.113.77"), ("vip-range-v6", "2001:db8:100::77")):
        ok = vip_policy.kubectl("apply", "--dry-run=server", "-f", "-", input=_farm(name, vip), check=False)
        assert ok.returncode == 0, f"{vip} is inside the allowed ranges but was refused: {ok.stderr}"
