import os
import signal
import threading
import time

from nodeagent.waker import Waker


def test_set_wakes_a_waiter_from_another_thread_and_clear_resets_it():
    w = Waker()
    assert w.wait(0.01) is False and not w.is_set()
    threading.Timer(0.05, w.set).start()
    assert w.wait(5) is True and w.is_set()
    assert w.wait(0) is True                   # stays set until cleared
    w.clear()
    assert w.wait(0.01) is False
    w.close()


def test_many_sets_never_block_the_setter_and_one_clear_drains_them():
    w = Waker()
    for _ in range(200_000):                   # far more than a pipe holds
        w.set()
    w.clear()
    assert w.wait(0.01) is False
    w.close()


def test_a_signal_handler_can_set_it_while_the_main_thread_waits_and_clears_in_a_loop():
    """What the agent's SIGHUP handler does, thousands of times while the main loop passes
    through wait/clear: every signal is seen and nothing blocks (an Event can deadlock here)."""
    w = Waker()
    seen = []
    old = signal.signal(signal.SIGUSR2, lambda *_: (seen.append(1), w.set()))
    stop = threading.Event()

    def killer():
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.0005)
    t = threading.Thread(target=killer, daemon=True)
    try:
        t.start()
        woken = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            woken += w.wait(0.001)
            w.clear()
        stop.set()
        t.join(5)
        assert len(seen) > 100 and woken > 100
        os.kill(os.getpid(), signal.SIGUSR2)
        assert w.wait(5) is True               # a last signal still wakes it
    finally:
        stop.set()
        signal.signal(signal.SIGUSR2, old)
        w.close()
