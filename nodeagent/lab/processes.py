"""Lifetimes of the processes and temporary worlds that the lab (and the test API server) start.

A lab builds namespaces and starts agents, servers and clients; the cluster tests' API-server
harness starts etcd and kube-apiserver. Both must clean up on every exit: normal return,
an exception, Ctrl-C, SIGTERM, and, for their children, even SIGKILL of the parent. pyroute2
forks helper processes that inherit atexit handlers and signal handlers, so cleanup runs only
in the process that created the owner.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import threading
from typing import Callable


class CleanupOnExit:
    """Run `close` once: at interpreter exit, and on SIGTERM/SIGINT (then re-raise the signal's
    usual outcome), but only in the process that created this object. A signal that arrives
    while `close` runs is held until it returns, so nothing interrupts the cleanup itself."""

    def __init__(self, close: Callable[[], None], *, signals: bool = True):
        self._close = close
        self._owner_pid = os.getpid()
        self._done = False
        self._closing = False
        self._deferred: Callable[[], None] | None = None
        atexit.register(self.run)
        if signals and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._handler(signal.getsignal(sig)))

    @property
    def in_owner(self) -> bool:
        return os.getpid() == self._owner_pid

    def run(self) -> None:
        if self._done or not self.in_owner:
            return
        self._done = True
        try:
            atexit.unregister(self.run)
        except Exception:
            pass
        self._closing = True
        try:
            self._close()
        finally:
            self._closing = False
        deferred, self._deferred = self._deferred, None
        if deferred is not None:
            deferred()

    def _handler(self, previous):
        def outcome(signum, frame):
            if callable(previous):
                previous(signum, frame)
            else:
                raise SystemExit(128 + signum)

        def handler(signum, frame):
            if not self.in_owner:
                os._exit(128 + signum)      # a forked helper inherited this handler: just go
            if self._closing:
                # A signal while the cleanup runs (a second Ctrl-C, or one during a normal exit)
                # would raise in the middle of it and leave namespaces behind: it takes effect
                # once the cleanup is done instead.
                self._deferred = lambda: outcome(signum, frame)
                return
            self.run()
            outcome(signum, frame)
        return handler


def pdeathsig_prefix() -> list[str]:
    """argv prefix so a child is SIGKILLed when its parent dies, even by SIGKILL. PR_SET_PDEATHSIG
    fires when the forking *thread* exits, so it is used only when forking from the main thread."""
    if threading.current_thread() is threading.main_thread() and shutil.which("setpriv"):
        return ["setpriv", "--pdeathsig", "SIGKILL", "--"]
    return []


def spawn_logged(argv: list[str], log_path: str | None, **popen) -> subprocess.Popen:
    """Start argv with stdout+stderr appended to log_path (or discarded). The parent's copy of
    the log descriptor is closed at once; the child keeps its own."""
    if log_path is None:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **popen)
    with open(log_path, "ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **popen)


def terminate(proc: subprocess.Popen | None, grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; always reaps the child."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass
