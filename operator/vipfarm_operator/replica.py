"""Whether this operator replica is the active one, as Kopf's peering decided; any thread may ask.

Kopf pauses its own watchers, handlers and timers in a standby replica (a live peer with a
higher priority exists), but not the operator's own threads: the reconcile workers, the events
poster and the prune thread. Each of them calls active() right before it writes, so a standby
writes nothing, and a replica demoted with work queued drops that work instead of writing it.

Kopf 1.45.2 keeps its pause state in a ToggleSet (`operator_paused`) made inside
kopf.spawn_tasks and handed to the orchestrator; each peering's toggle (`conflicts_found`,
created "on" when peering is mandatory) goes to process_peering_event. Neither is public, so
install() wraps those two functions to capture them. It checks their signatures first and
refuses to start the operator if they changed (a Kopf upgrade must not silently let a standby
write). kopf is pinned in pyproject.toml.

Active means: a peering toggle exists (Kopf has started to decide) and no toggle of the set is
on. That is the condition Kopf's own watchers wait for, read from the same objects.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any, Callable

log = logging.getLogger("vipfarm.operator.replica")

_paused: Any = None            # Kopf's operator_paused ToggleSet, once the orchestrator runs
_peering: list[Any] = []       # Kopf's conflicts_found toggles, once peering has started
_listeners: list[Callable[[bool], None]] = []
_installed = False


class KopfIncompatible(RuntimeError):
    pass


def active() -> bool:
    """True only while Kopf runs this replica's handlers (peering says it is the active one)."""
    paused = _paused
    if paused is None or not _peering:
        return False
    try:
        toggles = tuple(paused)      # one C-level copy: safe against the loop adding a toggle
        return not any(t.is_on() for t in toggles)
    except RuntimeError:             # being changed right now: not sure, so not active
        return False


def on_change(fn: Callable[[bool], None]) -> None:
    """Call fn(active) in Kopf's event loop each time this replica becomes active or standby.
    It must be quick and must not block (it runs before Kopf's watchers resume)."""
    _listeners.append(fn)


def _publish(now: bool) -> None:
    for fn in list(_listeners):
        try:
            fn(now)
        except Exception:      # a listener must not stop the follower
            log.exception("event=replica_listener_failed")


async def _follow(paused: Any, peering_started: asyncio.Event) -> None:
    """Log and publish each change of active(); woken by Kopf's own toggle notifications."""
    await peering_started.wait()
    last = None
    while True:
        now = active()
        if now != last:
            log.info("event=replica_state active=%s", "true" if now else "false")
            _publish(now)
            last = now
        await paused.wait_for(now)     # active: until a pause; standby: until it lifts


def _check(fn: Callable, name: str, params: set[str]) -> None:
    got = set(inspect.signature(fn).parameters)
    if not params <= got:
        import kopf
        raise KopfIncompatible(
            f"kopf {getattr(kopf, '__version__', '?')}: {name} no longer takes {sorted(params - got)}; "
            f"vipfarm_operator.replica cannot tell whether this replica is active, and a standby must "
            f"never write. Pin kopf==1.45.2 (pyproject.toml) or port replica.py to this Kopf.")


def install() -> None:
    """Wrap Kopf's orchestrator and peering processor (before kopf.operator() runs)."""
    global _installed
    if _installed:
        return
    from kopf._core.engines import peering
    from kopf._core.reactor import orchestration
    _check(orchestration.orchestrator, "orchestration.orchestrator", {"operator_paused"})
    _check(peering.process_peering_event, "peering.process_peering_event", {"conflicts_found"})
    original_orchestrator = orchestration.orchestrator
    original_peering = peering.process_peering_event
    state: dict[str, asyncio.Event] = {}

    async def orchestrator(*args, operator_paused, **kwargs):
        global _paused
        _paused = operator_paused
        state["started"] = asyncio.Event()
        follower = asyncio.create_task(_follow(operator_paused, state["started"]), name="vipfarm replica state")
        try:
            return await original_orchestrator(*args, operator_paused=operator_paused, **kwargs)
        finally:
            follower.cancel()

    async def process_peering_event(*args, conflicts_found=None, **kwargs):
        if conflicts_found is not None and conflicts_found not in _peering:
            _peering.append(conflicts_found)
            if "started" in state:
                state["started"].set()
        return await original_peering(*args, conflicts_found=conflicts_found, **kwargs)

    orchestration.orchestrator = orchestrator
    peering.process_peering_event = process_peering_event
    _installed = True
