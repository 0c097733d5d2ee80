"""An Event a signal handler may set.

A Python signal handler runs on the main thread between two bytecodes, possibly while that
thread holds a lock. threading.Event.set() takes the Event's lock, so a SIGHUP or SIGTERM
handler calling it can block forever on a lock its own thread holds (the main loop inside
Event.wait() or clear()): the agent then heartbeats on (its other threads run), but never
takes a reload or a stop again. Waker.set() takes no lock: it stores a flag and writes a
byte to a non-blocking pipe (async-signal-safe); wait() sleeps in select() on the pipe, which
a signal interrupts so its handler runs (PEP 475 retries the select afterwards).
"""
from __future__ import annotations

import os
import select


class Waker:
    def __init__(self) -> None:
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._flag = False

    def set(self) -> None:
        """From any thread or a signal handler."""
        self._flag = True
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass                      # the pipe is full: a wait() returns at once anyway

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        """Until set() (True) or `timeout` seconds (False, unless set meanwhile)."""
        if self._flag:
            return True
        select.select([self._read], [], [], timeout)
        return self._flag

    def clear(self) -> None:
        self._flag = False
        try:
            while os.read(self._read, 4096):
                pass
        except BlockingIOError:
            pass
        # The flag first, then the drain: a set() in between leaves the flag True, so the next
        # wait() returns at once, as it must.

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass
