"""Process lifetimes of the lab and the test API server (nodeagent/lab/processes.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

from nodeagent.lab.processes import CleanupOnExit, spawn_logged, terminate


def test_cleanup_runs_once_however_often_it_is_asked():
    calls = []
    c = CleanupOnExit(lambda: calls.append(1), signals=False)
    c.run()
    c.run()
    assert calls == [1]


def test_cleanup_never_runs_in_a_forked_child(tmp_path):
    marker = tmp_path / "ran"
    c = CleanupOnExit(lambda: marker.write_text(str(os.getpid())), signals=False)
    pid = os.fork()
    if pid == 0:           # the child: pyroute2 forks helpers exactly like this
        c.run()
        os._exit(0)
    os.waitpid(pid, 0)
    assert not marker.exists()
    c.run()
    assert marker.read_text() == str(os.getpid())


def test_a_sigterm_runs_the_cleanup_in_the_owner_process(tmp_path):
    marker = tmp_path / "ran"
    code = (f"import time\nfrom nodeagent.lab.processes import CleanupOnExit\n"
            f"CleanupOnExit(lambda: open({str(marker)!r}, 'w').write('x'))\nprint('up', flush=True)\ntime.sleep(30)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    p.terminate()
    assert p.wait(timeout=10) == 128 + 15
    assert marker.read_text() == "x"


def test_spawn_logged_leaves_no_descriptor_open_in_the_parent(tmp_path):
    before = len(os.listdir("/proc/self/fd"))
    procs = [spawn_logged([sys.executable, "-c", "print('hello')"], str(tmp_path / f"{i}.log")) for i in range(5)]
    for p in procs:
        p.wait(timeout=10)
    assert len(os.listdir("/proc/self/fd")) == before
    assert (tmp_path / "0.log").read_text() == "hello\n"


def test_terminate_escalates_to_sigkill_when_sigterm_is_ignored():
    code = "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('up', flush=True)\ntime.sleep(60)\n"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "up"
    t0 = time.monotonic()
    terminate(p, grace=0.5)
    assert p.returncode == -9 and time.monotonic() - t0 < 10


def test_a_signal_during_the_cleanup_waits_until_the_cleanup_is_done(tmp_path):
    """A second Ctrl-C (or one during a normal exit) must not interrupt the teardown half-way:
    the cleanup, slowed here by SIGINTs sent to itself, still runs to its last step."""
    marker = tmp_path / "steps"
    code = (f"import os, signal, time\nfrom nodeagent.lab.processes import CleanupOnExit\n"
            f"def close():\n"
            f"    for i in range(3):\n"
            f"        os.kill(os.getpid(), signal.SIGINT)\n"
            f"        time.sleep(0.1)\n"
            f"        open({str(marker)!r}, 'a').write(str(i))\n"
            f"c = CleanupOnExit(close)\n"
            f"try:\n"
            f"    c.run()\n"
            f"except KeyboardInterrupt:\n"
            f"    print('interrupted after the cleanup', flush=True)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert marker.read_text() == "012", p.stderr
    assert p.stdout.strip() == "interrupted after the cleanup", p.stderr
