"""The chart on a real API server: install (templated CRDs, then the peering hook), upgrade
(the DaemonSet and the CRDs follow), uninstall (the CRDs and the Farms stay), install again.

No kubelet here: the pods stay Pending. The API server still validates every object, e.g. the
agent's securityContext (allowPrivilegeEscalation with SYS_ADMIN) and the probes' named ports."""
from __future__ import annotations

import json

from tests.cluster.test_control_plane import NS

FARM = {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "kept"},
        "spec": {"virtualIPs": ["203.0.113.77"], "rules": [{"protocol": "TCP", "ports": "80"}]}}


def _get(api, *what) -> dict:
    return json.loads(api.kubectl("get", *what, "-o", "json").stdout)


def test_install_upgrade_uninstall_keeps_the_crds_and_farms_and_installs_again(apiserver):
    api = apiserver
    res = api.helm("install", "vipfarm", "charts/vipfarm", "--namespace", NS, "--create-namespace", "--wait=false")
    assert "STATUS: deployed" in res.stdout, res.stdout + res.stderr
    try:
        api.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "crd/farmnodes.vipfarm.io",
                    "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")
        assert _get(api, "clusterkopfpeering", "vipfarm")["metadata"]["name"] == "vipfarm"
        ds = _get(api, "-n", NS, "daemonset", "vipfarm-agent")
        agent = ds["spec"]["template"]["spec"]["containers"][0]
        assert agent["securityContext"]["privileged"] is False
        assert ds["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"
        assert _get(api, "-n", NS, "pdb", "vipfarm-operator")["spec"]["minAvailable"] == 1
        crd = _get(api, "crd", "farms.vipfarm.io")
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        api.kubectl("apply", "-f", "-", input=json.dumps(FARM))

        res = api.helm("upgrade", "vipfarm", "charts/vipfarm", "--namespace", NS, "--set", "image.tag=0.1.1",
                       "--set", "commonLabels.upgraded=yes", "--wait=false")
        assert "STATUS: deployed" in res.stdout, res.stdout + res.stderr
        ds = _get(api, "-n", NS, "daemonset", "vipfarm-agent")
        assert ds["spec"]["template"]["spec"]["containers"][0]["image"] == "vipfarm/vipfarm:0.1.1"
        # The CRDs follow the chart on upgrade (a crds/ folder would not).
        assert _get(api, "crd", "farms.vipfarm.io")["metadata"]["labels"]["upgraded"] == "yes"
        assert _get(api, "clusterkopfpeering", "vipfarm")["metadata"]["labels"]["upgraded"] == "yes"
    finally:
        res = api.helm("uninstall", "vipfarm", "--namespace", NS, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "kept due to the resource policy" in res.stdout + res.stderr, res.stdout + res.stderr
    assert _get(api, "farm", "kept")["spec"]["virtualIPs"] == ["203.0.113.77"]
    # The kept CRDs still carry this release's ownership, so the same release installs again.
    res = api.helm("install", "vipfarm", "charts/vipfarm", "--namespace", NS, "--wait=false")
    assert "STATUS: deployed" in res.stdout, res.stdout + res.stderr
    api.kubectl("delete", "farm", "kept", "--wait=false")
    api.helm("uninstall", "vipfarm", "--namespace", NS, check=False)
