"""vipfarm-agent --cluster: serve the Farms that select this node, report into their status.

* The node name comes from --node or NODE_NAME (the downward API in the DaemonSet).
* Farms come from a list+watch of farms.vipfarm.io; a Farm is served when its nodeSelector
  matches this Node's labels. The buckets come from status.assignment (the operator's), so
  until the operator assigns, the node holds the VIP and drops its traffic.
* API writes are bounded: one merge patch of status.agents.<node> when the report changes,
  plus a refresh at most once per --refresh seconds (>= 30). Liveness never rides on them.
* When the API server is unreachable the dataplane keeps its last programming, untouched,
  and the watch reconnects with backoff.
* A Farm being deleted is removed from the dataplane (VIP, filter entries) and reported
  `released`, which lets the operator's finalizer go.
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

from vipfarm.reconcile import conflicting_claims, farm_ref, owned_by, selects, utc_now
from vipfarm.spec import GROUP, PLURAL, VERSION, FarmSpecError, parse_farm

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
        self.labels_at = 0.0
        self.reported: dict[str, tuple[dict, float]] = {}   # farm -> (report, monotonic time)
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
            owned, epoch, servable = owned_by(body.get("status"), self.node)
            claims = conflicting_claims(name, body["metadata"].get("creationTimestamp", ""),
                                        tuple(str(v) for v in farm.virtual_ips), refs)
            if not servable or claims:
                reports[name] = {"ready": False, "reason": "Conflict", "appliedEpoch": epoch}
                continue
            items.append(FarmOwnership(farm, owned))
            reports[name] = {"ready": True, "reason": "", "appliedEpoch": epoch, "lastError": ""}
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
        for name, report in reports.items():
            self._report(name, report)

    def _report(self, farm: str, report: dict) -> None:
        """Write status.agents.<node> when it changed, or when the refresh period passed."""
        last = self.reported.get(farm)
        if last and last[0] == report and time.monotonic() - last[1] < self.refresh_s:
            return
        body = {"status": {"agents": {self.node: dict(report, reportedAt=utc_now())}}}
        try:
            self.custom.patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, farm, body,
                                                           _content_type="application/merge-patch+json")
            self.api_writes += 1
            self.reported[farm] = (report, time.monotonic())
            if not last or last[0] != report:
                log.info("event=reported farm=%s node=%s ready=%s reason=%s epoch=%s", farm, self.node,
                         report.get("ready"), report.get("reason"), report.get("appliedEpoch"))
        except Exception as e:
            log.warning("event=report_failed farm=%s node=%s error=%s", farm, self.node, _short(e))

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
                kind, obj = self.events.get(timeout=5)
            except queue.Empty:
                self._apply()          # refreshes and retries, bounded by refresh_s
                continue
            self._absorb(kind, obj)
            time.sleep(0.05)           # coalesce bursts of watch events
            while True:
                try:
                    self._absorb(*self.events.get_nowait())
                except queue.Empty:
                    break
            self._apply()
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
            self.reported.pop(obj["metadata"]["name"], None)
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
