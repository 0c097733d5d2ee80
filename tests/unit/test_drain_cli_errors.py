"""`vipfarm drain` / `undrain` without usable credentials: a kubectl-style error naming the
command, the node and the fix, exit code 1, and no traceback."""
from __future__ import annotations

import pytest

from nodeagent.cli import main


@pytest.mark.parametrize("cmd", ["drain", "undrain"])
@pytest.mark.parametrize("flag", [True, False])
def test_without_credentials_the_drain_commands_say_how_to_give_them(cmd, flag, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    missing = str(tmp_path / "no-such.kubeconfig")
    monkeypatch.setenv("KUBECONFIG", missing)      # also restores KUBECONFIG after --kubeconfig set it
    assert main([cmd, "worker-1"] + (["--kubeconfig", missing] if flag else [])) == 1
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.startswith(f"error: vipfarm {cmd} worker-1: cannot reach the Kubernetes API")
    assert "set KUBECONFIG" in out.err and "Traceback" not in out.err
