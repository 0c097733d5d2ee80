"""Run test code in a network namespace of its own, on one thread of the test process.

The BPF tier needs it for the handover rules: under BPF_PROG_TEST_RUN, bpf_skc_lookup_tcp
searches the network namespace of the calling thread, so the sockets the filter should find
must live in a namespace the test made (lab rules: never the root namespace). A namespace is
per thread in Linux, so one worker thread setns()es into a fresh namespace and runs every
call given to it there; sockets it creates and test runs it starts see that namespace only.
The rest of the process (pytest, other fixtures) stays where it was.

    with NetnsThread() as ns:
        ns.call(fn, *args)      # runs fn on the worker thread, inside the namespace
The namespace is named with a per-run prefix and deleted on exit, failure included.
"""
from __future__ import annotations

import ctypes
import os
import queue
import threading
import uuid

from pyroute2 import netns

CLONE_NEWNET = 0x40000000
_STOP = object()


class NetnsThread:
    def __init__(self, prefix: str = "vfho"):
        self.name = f"{prefix}{os.getpid() & 0xffff:04x}-{uuid.uuid4().hex[:6]}"
        self._jobs: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> "NetnsThread":
        netns.create(self.name)
        try:
            self._thread = threading.Thread(target=self._run, name=f"netns-{self.name}", daemon=True)
            self._thread.start()
            if not self._ready.wait(10):
                raise RuntimeError(f"the worker thread of namespace {self.name} did not start within 10 s")
            if self._error is not None:
                raise RuntimeError(f"entering namespace {self.name} failed: {self._error}") from self._error
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join(10)
        try:
            netns.remove(self.name)
        except FileNotFoundError:
            pass

    def _run(self) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({self.name}): {os.strerror(err)}")
            finally:
                os.close(fd)
        except BaseException as e:
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            fn, args, kwargs, done = job
            try:
                done.put((True, fn(*args, **kwargs)))
            except BaseException as e:   # handed back to the caller's thread
                done.put((False, e))

    def call(self, fn, *args, timeout: float = 300, **kwargs):
        """Run fn(*args, **kwargs) inside the namespace; its result, or its exception re-raised."""
        done: queue.Queue = queue.Queue()
        self._jobs.put((fn, args, kwargs, done))
        try:
            ok, value = done.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not finish within {timeout} s "
                               f"in namespace {self.name}") from None
        if not ok:
            raise value
        return value
