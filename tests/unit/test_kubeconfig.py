"""vipfarm.kubeconfig: the one loader of API credentials."""
from __future__ import annotations

import json

import pytest

from vipfarm.kubeconfig import NoCredentials, api_client, client_configuration


def write_kubeconfig(path, server="https://127.0.0.1:6443"):
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": server, "insecure-skip-tls-verify": True}}],
        "users": [{"name": "u", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}]}))
    return path


def test_outside_a_pod_the_kubeconfig_named_by_kubeconfig_is_used(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(write_kubeconfig(tmp_path / "kc", "https://127.0.0.1:7443")))
    cfg = client_configuration(pool_size=16)
    assert cfg.host == "https://127.0.0.1:7443" and cfg.connection_pool_maxsize == 16
    assert cfg.api_key == {"BearerToken": "Bearer t0ken"}
    assert api_client().configuration.host == "https://127.0.0.1:7443"


def test_with_no_credentials_anywhere_the_error_says_what_was_tried_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(NoCredentials, match="not in a pod .* no usable kubeconfig .* set KUBECONFIG"):
        client_configuration()
