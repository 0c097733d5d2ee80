"""One install script serves development, CI and the image; the image gets no test code or tools."""
from __future__ import annotations

import os
import re
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "scripts", "install.sh")
TEST_ONLY = {"tcpdump", "netsniff-ng", "nftables", "iptables", "openssl", "curl", "chromium"}


def plan(*args: str) -> dict[str, str]:
    out = subprocess.run(["bash", SCRIPT, *args, "--print-plan"], capture_output=True, text=True, check=True).stdout
    return dict(line.split(": ", 1) for line in out.splitlines())


def test_the_image_is_built_with_the_runtime_mode_of_the_install_script():
    with open(os.path.join(REPO, "Dockerfile")) as f:
        runs = [line for line in f if line.startswith("RUN ")]
    assert len(runs) == 1 and re.search(r"scripts/install\.sh --runtime\b", runs[0]), runs


def test_the_runtime_mode_installs_no_test_tools_no_test_extras_and_no_kubernetes_binaries():
    p = plan("--runtime", "--no-bpffs")
    assert not TEST_ONLY & set(p["debian"].split())
    assert "python3-bpfcc" in p["debian"].split()
    assert "[test]" not in p["pip"] and "-e" not in p["pip"].split()
    assert p["kubernetes-binaries"] == "no" and p["bpffs"] == "no"


def test_the_development_mode_installs_the_test_tools_and_the_test_extras():
    p = plan()
    assert TEST_ONLY <= set(p["debian"].split())
    assert p["pip"].endswith("[test]") and p["kubernetes-binaries"] == "yes"


def test_an_unknown_option_is_refused_with_the_known_ones():
    res = subprocess.run(["bash", SCRIPT, "--fast"], capture_output=True, text=True)
    assert res.returncode == 2 and "--runtime" in res.stderr


def test_the_image_context_leaves_out_tests_benchmarks_and_local_state():
    with open(os.path.join(REPO, ".dockerignore")) as f:
        ignored = {line.strip() for line in f if line.strip() and not line.startswith("#")}
    assert {"tests", "bench", ".git", ".venv"} <= ignored
