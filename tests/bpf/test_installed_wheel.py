"""A plain (non-editable) install finds the BPF sources in its own package data.

The wheel is built from a copy of the source tree and installed with `pip install --target`
into an empty folder; a fresh interpreter that sees only that folder (plus the system's bcc)
then compiles and loads the filter. Nothing may come from the checkout.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SKIP = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".pytest_cache",
                              ".hypothesis", "bench")

CHECK = """
import os, sys
target = sys.argv[1]
import nodeagent, vipfarm, vipfarm_bpf
from nodeagent import bpf_program
from nodeagent.bpf_program import compile_filter, load_filter
for mod in (nodeagent, vipfarm, vipfarm_bpf):
    assert os.path.realpath(mod.__file__).startswith(target), (mod.__name__, mod.__file__)
assert os.path.realpath(bpf_program.PROGRAM_SOURCE).startswith(target), bpf_program.PROGRAM_SOURCE
fn = load_filter(compile_filter(bytes.fromhex("020000000001"), True))
print("loaded", bpf_program.PROGRAM_SOURCE, fn.fd > 0)
"""


def test_a_wheel_install_compiles_and_loads_the_filter_from_its_own_package_data(tmp_path):
    src, wheels, target = tmp_path / "src", tmp_path / "wheels", tmp_path / "site"
    shutil.copytree(REPO, src, ignore=SKIP)
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                            "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout + build.stderr
    wheel = next(wheels.glob("vipfarm-*.whl"))
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stdout + inst.stderr
    assert sorted(p.name for p in (target / "vipfarm_bpf").glob("*.[ch]")) == sorted(
        n for n in os.listdir(os.path.join(REPO, "bpf")) if n.endswith((".c", ".h")))
    shutil.rmtree(src)     # nothing of the source tree is left to fall back on
    env = dict(os.environ, PYTHONPATH=str(target))
    run = subprocess.run([sys.executable, "-c", CHECK, os.path.realpath(target)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "loaded" in run.stdout and run.stdout.strip().endswith("True")
