"""The cluster-tier harness itself: a real kube-apiserver with RBAC and ServiceAccount tokens,
restartable without losing etcd data, reachable from inside a network namespace."""
from __future__ import annotations

import json
import os
import re
import subprocess
import uuid

import pytest
from pyroute2 import IPRoute, netns

from tests.support.apiserver import ApiServer, binary_version, kubectl_binary

pytestmark = pytest.mark.cluster


def _uid() -> str:
    return uuid.uuid4().hex[:6]


def test_server_version(apiserver):
    out = json.loads(apiserver.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == binary_version("kube-apiserver") == "v1.37.2"


def test_rbac_denies_unbound_serviceaccount(apiserver):
    res = apiserver.kubectl("auth", "can-i", "list", "nodes",
                            "--as=system:serviceaccount:default:nobody", check=False)
    assert res.stdout.strip() == "no" and res.returncode == 1, res
    # ... while the admin (system:masters) may.
    assert apiserver.kubectl("auth", "can-i", "list", "nodes").stdout.strip() == "yes"


def test_minted_token_is_real_and_forbidden(apiserver, tmp_path):
    ns, sa = f"rbac-{_uid()}", "probe"
    apiserver.kubectl("create", "namespace", ns)
    apiserver.kubectl("-n", ns, "create", "serviceaccount", sa)
    token = apiserver.mint_token(ns, sa, duration="1h")
    assert token.count(".") == 2                                  # a signed JWT
    cfg = apiserver.kubeconfig_for_token(token, str(tmp_path / "sa.kubeconfig"))

    who = json.loads(apiserver.kubectl("auth", "whoami", "-o", "json", kubeconfig=cfg).stdout)
    assert who["status"]["userInfo"]["username"] == f"system:serviceaccount:{ns}:{sa}"

    res = apiserver.kubectl("get", "nodes", kubeconfig=cfg, check=False)
    assert res.returncode != 0
    assert "Forbidden" in res.stderr and f"system:serviceaccount:{ns}:{sa}" in res.stderr, res.stderr
    raw = apiserver.kubectl("get", "--raw", "/api/v1/nodes", kubeconfig=cfg, check=False)
    assert "Forbidden" in raw.stderr, raw.stderr

    # A binding makes the same token work: authorization really is RBAC.
    apiserver.kubectl("create", "clusterrole", f"nodes-{ns}", "--verb=list", "--resource=nodes")
    apiserver.kubectl("create", "clusterrolebinding", f"nodes-{ns}", f"--clusterrole=nodes-{ns}",
                      f"--serviceaccount={ns}:{sa}")
    apiserver.kubectl("get", "nodes", kubeconfig=cfg)

    # A garbage token is rejected outright (401).
    bad = apiserver.kubeconfig_for_token("not-a-token", str(tmp_path / "bad.kubeconfig"))
    res = apiserver.kubectl("get", "namespaces", kubeconfig=bad, check=False)
    assert res.returncode != 0 and "Unauthorized" in res.stderr, res.stderr


def test_helm_talks_to_the_apiserver(apiserver):
    out = apiserver.helm("list", "-A", "-o", "json").stdout
    assert json.loads(out) == []


def test_only_loopback_listeners(apiserver):
    pids = apiserver.pids()
    assert len(pids) == 2
    out = subprocess.run(["ss", "-H", "-ltnup"], capture_output=True, text=True, check=True).stdout
    ours = [ln for ln in out.splitlines() if any(f"pid={p}," in ln for p in pids)]
    assert ours, out
    for ln in ours:
        local = ln.split()[4]
        assert local.startswith("127.0.0.1:"), ln


def test_restart_keeps_data(apiserver):
    name = f"keep-{_uid()}"
    apiserver.kubectl("create", "configmap", name, "--from-literal=k=v")
    apiserver.stop_apiserver()
    assert not apiserver.running
    res = apiserver.kubectl("get", "configmap", name, check=False, timeout=30)
    assert res.returncode != 0                                     # really down
    apiserver.start_apiserver()
    out = json.loads(apiserver.kubectl("get", "configmap", name, "-o", "json").stdout)
    assert out["data"] == {"k": "v"}


@pytest.fixture
def namespace_pair():
    """A fresh network namespace (unique prefix, only ours) with loopback up."""
    name = f"vfh{os.getpid()}-{_uid()}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        yield name
    finally:
        netns.remove(name)


def _in_netns(name: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net=/run/netns/{name}", "--", *argv],
                          capture_output=True, text=True, timeout=60)


def test_forwarder_into_netns(apiserver, namespace_pair, tmp_path):
    name = namespace_pair
    url = apiserver.forward_into(name, port=6443)
    try:
        assert url == "https://127.0.0.1:6443"
        cfg = apiserver.kubeconfig_for_token(apiserver.admin_token, str(tmp_path / "ns.kubeconfig"),
                                             server=url)
        kubectl = kubectl_binary()
        res = _in_netns(name, kubectl, f"--kubeconfig={cfg}", "get", "--raw", "/readyz")
        assert res.returncode == 0 and res.stdout.strip() == "ok", res

        # TLS verified (same CA, 127.0.0.1 in the cert), and a minted SA token works through it.
        apiserver.kubectl("-n", "default", "create", "serviceaccount", f"agent-{name}")
        token = apiserver.mint_token("default", f"agent-{name}")
        sacfg = apiserver.kubeconfig_for_token(token, str(tmp_path / "sa.kubeconfig"), server=url)
        res = _in_netns(name, kubectl, f"--kubeconfig={sacfg}", "auth", "whoami", "-o", "json")
        assert res.returncode == 0, res
        assert json.loads(res.stdout)["status"]["userInfo"]["username"] == \
            f"system:serviceaccount:default:agent-{name}"

        # The namespace is really isolated: the root-ns port itself is not reachable from inside.
        res = _in_netns(name, kubectl, f"--kubeconfig={cfg}", f"--server={apiserver.url}",
                        "--request-timeout=5s", "get", "--raw", "/readyz")
        assert res.returncode != 0 and re.search(r"refused", res.stderr), res

        # Many concurrent connections, larger bodies.
        res = _in_netns(name, "sh", "-c", " & ".join(
            [f"{kubectl} --kubeconfig={cfg} get --raw /openapi/v2 >/dev/null"] * 6) + "; wait")
        assert res.returncode == 0, res
    finally:
        apiserver.stop_forward(name)
    assert ":6443" not in _in_netns(name, "ss", "-H", "-ltn").stdout       # listener gone


def test_openssl_fallback_and_cleanup():
    """The openssl CA path works on its own, and close() removes everything (twice is fine)."""
    with ApiServer(tls="openssl") as api:
        assert api.ca_file.endswith("pki/ca.crt")
        assert api.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
        pids, workdir, port = api.pids(), api.workdir, api.port
        api.stop_apiserver()
        api.start_apiserver()                                  # restart keeps the openssl cert
        assert api.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
        pids = api.pids()
    api.close()
    assert not os.path.exists(workdir)
    for p in pids:
        assert _gone_or_zombie(p), f"pid {p} still running after close()"
    out = subprocess.run(["ss", "-H", "-ltn"], capture_output=True, text=True).stdout
    assert f"127.0.0.1:{port} " not in out


def _gone_or_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] == "Z"
    except FileNotFoundError:
        return True


def test_the_audit_log_names_the_token_that_made_each_request(apiserver, tmp_path):
    """Two tokens of one ServiceAccount are told apart by their credential id (the JTI)."""
    from tests.support.apiserver import audit_credential, token_id
    ns, sa = f"audit-{_uid()}", "writer"
    apiserver.kubectl("create", "namespace", ns)
    apiserver.kubectl("-n", ns, "create", "serviceaccount", sa)
    apiserver.kubectl("-n", ns, "create", "role", "cm", "--verb=create", "--resource=configmaps")
    apiserver.kubectl("-n", ns, "create", "rolebinding", "cm", "--role=cm", f"--serviceaccount={ns}:{sa}")
    first, second = apiserver.mint_token(ns, sa), apiserver.mint_token(ns, sa)
    assert token_id(first) != token_id(second)
    cfg = apiserver.kubeconfig_for_token(first, str(tmp_path / "first.kubeconfig"))
    apiserver.kubectl("-n", ns, "create", "configmap", "by-first", kubeconfig=cfg)
    mine = [e for e in apiserver.audit_events() if audit_credential(e) == token_id(first)]
    assert [(e["verb"], e["objectRef"]["resource"], e["objectRef"].get("name")) for e in mine
            if e["verb"] == "create"] == [("create", "configmaps", "by-first")], mine
    assert not [e for e in apiserver.audit_events() if audit_credential(e) == token_id(second)]


def test_python_client(apiserver):
    from kubernetes import client
    with apiserver.api_client() as api:
        names = {n.metadata.name for n in client.CoreV1Api(api).list_namespace().items}
    assert {"default", "kube-system"} <= names
