"""vipfarm-agent --cluster: serve the Farms that select this node, report into its FarmNode.

* The node name comes from --node or NODE_NAME (the downward API in the DaemonSet).
* Farms come from a list+watch of farms.vipfarm.io; a Farm is served when its nodeSelector
  matches this Node's labels. The buckets come from status.assignment (the operator's), so
  until the operator assigns, the node holds the VIP and drops its traffic.
* Reports go into one FarmNode object named after the node (farmnodes.vipfarm.io, created
  by the agent, owned by the Node): status.farms.<farm> per selected Farm. The agent never
  writes a Farm. Writes are bounded and paced (nodeagent/report.py): a merge patch of the
  entries that changed, and otherwise one refresh per --refresh seconds (>= 30). Liveness
  never rides on them.
* When the API server is unreachable the dataplane keeps its last programming, untouched,
  and the watch reconnects with backoff.
* A Farm being deleted is removed from the dataplane (VIP, filter entries) and reported
  `released`, which lets the operator's finalizer go; once the Farm is gone its entry is
  removed from the FarmNode.
* SIGTERM/SIGINT: the agent exits and leaves the dataplane in place for its successor (a
  DaemonSet restart must not drop traffic). Take a node out with cordon or the
  vipfarm.io/drain annotation; pass --leave-on-exit to clean up on exit instead.
"""
from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from typing import Any

from vipfarm import __version__
from vipfarm.conflicts import claimed_elsewhere, farm_ref
from vipfarm.farm_status import served_buckets
from vipfarm.membership import selects
from vipfarm.timestamps import utc_now
from vipfarm.spec import API_VERSION, GROUP, PLURAL, REPORT_PLURAL, VERSION, FarmSpecError, parse_farm

from . import report as pacing
from .bpf_program import DataplaneError
from .netconfig import InterfaceError
from .node import NodeDataplanes
from .plan import FarmOwnership

log = logging.getLogger("vipfarm.agent.cluster")


class ClusterAgent:
    def __init__(self, node: str, pin_root: str, state_root: str, refresh_s: float = 60.0,
                 leave_on_exit: bool = False):
        from kubernetes import client, config
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        self.custom = client.CustomObjectsApi()
        self.core = client.CoreV1Api()
        self.node = node
        self.refresh_s = max(30.0, refresh_s)
        self.leave_on_exit = leave_on_exit
        self.dataplanes = NodeDataplanes(node, pin_root, state_root)
        self.farms: dict[str, dict[str, Any]] = {}
        self.labels: dict[str, str] = {}
        self.node_uid: str | None = None
        self.labels_at = 0.0
        # The FarmNode's status.farms as last written (None until read or created), the
        # reports wanted now, and the pacing clock (nodeagent/report.py).
        self.written: dict[str, dict] | None = None
        self.wanted: dict[str, dict] = {}
        self.last_write = float("-inf")
        self.last_event = 0.0
        self.pending_since: float | None = None
        self.write_failures = 0
        self.events: queue.Queue = queue.Queue()
        self.stopping = threading.Event()
        self.api_writes = 0

    # -- inputs ---------------------------------------------------------------------------
    def _refresh_labels(self, force: bool = False) -> None:
        if not force and time.monotonic() - self.labels_at < 30:
            return
        try:
            n = self.core.read_node(self.node)
            self.labels = dict(n.metadata.labels or {})
            self.node_uid = n.metadata.uid
            self.labels_at = time.monotonic()
        except Exception as e:
            if force:
                log.warning("event=node_read_failed node=%s error=%s", self.node, _short(e))

    def _watch_loop(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException
        backoff = 1.0
        while not self.stopping.is_set():
            try:
                listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                rv = listing["metadata"]["resourceVersion"]
                self.events.put(("LIST", {i["metadata"]["name"]: i for i in listing.get("items", [])}))
                if backoff > 1:
                    log.info("event=api_reconnected node=%s", self.node)
                backoff = 1.0
                w = watch.Watch()
                for ev in w.stream(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                   resource_version=rv, timeout_seconds=60, allow_watch_bookmarks=True):
                    if self.stopping.is_set():
                        w.stop()
                        break
                    if ev["type"] == "BOOKMARK":
                        continue
                    if ev["type"] == "ERROR":
                        break
                    self.events.put((ev["type"], ev["object"]))
            except ApiException as e:
                if e.status != 410:
                    log.warning("event=watch_failed node=%s status=%s backoff=%.0fs", self.node, e.status, backoff)
                    self.stopping.wait(backoff)
                    backoff = min(backoff * 2, 10)
            except Exception as e:
                log.warning("event=api_unreachable node=%s error=%s action=keep_serving backoff=%.0fs",
                            self.node, _short(e), backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 10)

    # -- decisions ------------------------------------------------------------------------
    def _wanted(self) -> tuple[list[FarmOwnership], dict[str, dict]]:
        """The farms to serve with their buckets, and the report for each selected farm."""
        items: list[FarmOwnership] = []
        reports: dict[str, dict] = {}
        # The operator's conflict rule, applied locally too: a Farm whose VIP an earlier Farm
        # holds must never reach the dataplane, even before the operator has marked it.
        refs = [farm_ref(b) for b in self.farms.values()]
        for name, body in sorted(self.farms.items()):
            spec = body.get("spec") or {}
            if not selects(spec.get("nodeSelector") or {}, self.labels):
                continue
            if body["metadata"].get("deletionTimestamp"):
                reports[name] = {"ready": False, "reason": "Deleting", "released": True}
                continue
            try:
                farm = parse_farm(body)
            except FarmSpecError as e:
                reports[name] = {"ready": False, "reason": "InvalidSpec", "lastError": str(e)[:1000]}
                continue
            served = served_buckets(body.get("status"), self.node)
            claims = claimed_elsewhere(farm_ref(body), refs)
            if not served.servable or claims:
                reports[name] = {"ready": False, "reason": "Conflict", "appliedEpoch": served.epoch}
                continue
            items.append(FarmOwnership(farm, served.buckets))
            reports[name] = {"ready": True, "reason": "", "appliedEpoch": served.epoch, "lastError": ""}
        return items, reports

    def _apply(self) -> None:
        self._refresh_labels()
        items, reports = self._wanted()
        try:
            self.dataplanes.program(items)
            for i in items:
                reports[i.farm.name]["dataplaneMode"] = self.dataplanes.mode_of(i.farm.interface)
        except (DataplaneError, InterfaceError, ValueError, OSError) as e:
            log.error("event=program_failed node=%s error=%s", self.node, e)
            for i in items:
                reports[i.farm.name].update({"ready": False, "reason": "DataplaneError", "lastError": str(e)[:1000]})
        if reports != self.wanted:
            for name, r in sorted(reports.items()):
                if (self.wanted.get(name) or {}).get("ready") != r.get("ready") or \
                        (self.wanted.get(name) or {}).get("reason") != r.get("reason"):
                    log.info("event=report_changed farm=%s node=%s ready=%s reason=%s epoch=%s", name,
                             self.node, r.get("ready"), r.get("reason"), r.get("appliedEpoch"))
            self.wanted = reports

    # -- the FarmNode -----------------------------------------------------------------------
    def _report_delay(self) -> float:
        """Seconds until the FarmNode should be written (0: now)."""
        now = time.monotonic()
        written = self.written if self.written is not None else {}
        pending = bool(pacing.farms_patch(written, self.wanted)) or self.written is None
        if pending and self.pending_since is None:
            self.pending_since = now
        if not pending:
            self.pending_since = None
        return pacing.seconds_until_write(
            now, pending=pending, urgent=self.written is None or pacing.is_urgent(written, self.wanted),
            last_write=self.last_write, last_event=self.last_event,
            pending_since=self.pending_since if self.pending_since is not None else now,
            refresh_s=self.refresh_s)

    def _write_report(self) -> None:
        """One merge patch of the FarmNode status: the changed entries, counts, reportedAt."""
        from kubernetes.client.rest import ApiException
        try:
            if self.written is None:
                self.written = self._read_or_create_farmnode()
            try:
                self._patch_farmnode(self.written)
            except ApiException as e:
                if e.status != 404:
                    raise
                self.written = self._read_or_create_farmnode()   # deleted under us: start again
                self._patch_farmnode(self.written)
            self.written = {k: dict(v) for k, v in self.wanted.items()}
            self.pending_since = None
            self.write_failures = 0
            self.last_write = time.monotonic()
        except Exception as e:
            self.write_failures += 1
            backoff = min(30.0, 2.0 ** self.write_failures)
            log.warning("event=report_failed node=%s error=%s retry_in=%.0fs", self.node, _short(e), backoff)
            # Pacing counts from the last write: pretend it is later, so retries back off.
            self.last_write = time.monotonic() + backoff - pacing.URGENT_GAP

    def _patch_farmnode(self, written: dict[str, dict]) -> None:
        """Merge-patch what differs from `written` (the FarmNode as last known) to the wanted reports."""
        body = pacing.status_patch(pacing.farms_patch(written, self.wanted), self.wanted, utc_now(), __version__)
        self.custom.patch_cluster_custom_object_status(GROUP, VERSION, REPORT_PLURAL, self.node, body,
                                                       _content_type="application/merge-patch+json")
        self.api_writes += 1

    def _read_or_create_farmnode(self) -> dict[str, dict]:
        """status.farms of this node's FarmNode, creating the object when it is missing."""
        from kubernetes.client.rest import ApiException
        try:
            obj = self.custom.get_cluster_custom_object(GROUP, VERSION, REPORT_PLURAL, self.node)
        except ApiException as e:
            if e.status != 404:
                raise
            obj = self.custom.create_cluster_custom_object(
                GROUP, VERSION, REPORT_PLURAL, pacing.farmnode_object(self.node, self.node_uid, API_VERSION))
            self.api_writes += 1
            log.info("event=farmnode_created node=%s", self.node)
        return {k: dict(v) for k, v in ((obj.get("status") or {}).get("farms") or {}).items() if v}

    # -- main loop ------------------------------------------------------------------------
    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self._refresh_labels(force=True)
        threading.Thread(target=self._watch_loop, name="farm-watch", daemon=True).start()
        log.info("event=agent_ready node=%s mode=cluster", self.node)
        print(f"vipfarm-agent: node {self.node} in cluster mode", flush=True)
        while not self.stopping.is_set():
            try:
                kind, obj = self.events.get(timeout=max(0.05, min(5.0, self._report_delay())))
            except queue.Empty:
                self._apply()          # retries a failed dataplane change
            else:
                self._absorb(kind, obj)
                time.sleep(0.05)       # coalesce bursts of watch events
                while True:
                    try:
                        self._absorb(*self.events.get_nowait())
                    except queue.Empty:
                        break
                self.last_event = time.monotonic()
                self._apply()
            if self._report_delay() == 0:
                self._write_report()
        if self.leave_on_exit:
            self.dataplanes.stop()
        log.info("event=agent_stopped node=%s dataplane=%s", self.node,
                 "removed" if self.leave_on_exit else "left in place for the next agent")
        return 0

    def _absorb(self, kind: str, obj) -> None:
        if kind == "LIST":
            self.farms = dict(obj)
        elif kind == "DELETED":
            self.farms.pop(obj["metadata"]["name"], None)
        else:
            self.farms[obj["metadata"]["name"]] = obj


def _short(e: Exception) -> str:
    text = str(e).replace("\n", " ")
    return text[:200]


def run_cluster_agent(args) -> int:
    node = args.node or os.environ.get("NODE_NAME")
    if not node:
        print("vipfarm-agent: cluster mode needs the node name: set NODE_NAME (the DaemonSet sets it "
              "from spec.nodeName) or pass --node", flush=True)
        return 2
    return ClusterAgent(node, args.pin_root, args.state_root, args.refresh,
                        args.leave_on_exit).run()
