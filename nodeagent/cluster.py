"""vipfarm-agent --cluster: serve the Farms that select this node, report into its FarmNode.

* The node name comes from --node or NODE_NAME (the downward API in the DaemonSet).
* Farms come from a list+watch of farms.vipfarm.io; a Farm is served when its nodeSelector
  matches this Node's labels. The buckets come from status.assignment (the operator's), so
  until the operator assigns, the node holds the VIP and drops its traffic.
* Reports go into one FarmNode object named after the node (farmnodes.vipfarm.io, created
  by the agent, owned by the Node): status.farms.<farm> per selected Farm. The agent never
  writes a Farm. Writes are bounded and paced (nodeagent/farmnode_report.py): a merge patch of the
  entries that changed, and otherwise one refresh per --refresh seconds (>= 30). Liveness
  never rides on them.
* On start the agent programs nothing and reports nothing until it has its first full Farm
  LIST and has read its Node: the dataplane it adopted keeps serving as the previous agent
  left it, and the FarmNode keeps the previous agent's reports (a restart moves no bucket).
* Failover (nodeagent/heartbeat.py): a heartbeat thread decides the buckets of every Farm
  that has an assignment. Its base is the operator's assignment (status.assignment and its
  epoch); its members are the eligible ones of status.members (the operator's word: Node
  Ready, not cordoned or drained, agent reporting) with their weights and heartbeat
  addresses, plus this node when the Farm selects it. The buckets programmed are the
  engine's decisions, effective_assignment(base, weights, agreed view), so a crashed peer's
  buckets are taken over in well under a second, with no API round trip; the operator then
  writes the same assignment (vipfarm/decisions.py). Each report carries this node's
  heartbeat address (`farm_peers`, first IPv4 on the farm interface, else first global
  IPv6) and the latest membership (view, digest, agreed); a membership change is urgent.
* The heartbeat key: the Secret named by VIPFARM_HEARTBEAT_SECRET (key
  VIPFARM_HEARTBEAT_SECRET_KEY, with `<key>-previous` also accepted during a rotation) in
  POD_NAMESPACE (or VIPFARM_NAMESPACE), read at start and every KEY_REREAD seconds; a change
  reconfigures the heartbeats. Without a usable key a Farm of several members is served by
  nothing here: the log (event=heartbeat_key_unusable) and the report (reason
  HeartbeatKeyUnusable, lastError) name the Secret and the fix.
* Checkers (spec.checkers, nodeagent/checkers.py): a CheckRunner per served Farm with
  checkers. While they fail this node is withdrawn (it stays in the view, serves nothing;
  the operator shows it Withdrawn), and each transition is logged by the runner and becomes
  the Farm report's `checks` entry (checker name -> state, type, detail, since) and a
  Kubernetes Event about the Farm (vipfarm/farm_events.py says which, nodeagent/event_poster.py
  posts them from its own thread, rate limited, never waited for).
* When the API server is unreachable the heartbeats go on deciding (nothing on their path
  waits for the API) and the dataplane follows them; the rest of the programming stays
  as it was.
  Every API call that fails (the Node read, the Farm list+watch, the FarmNode read/create
  and its status patch) is logged once when it starts failing (event=api_failed, with the
  object and the reason) and once when it works again (event=api_recovered), and retried
  with backoff from 1 s doubling to 30 s (nodeagent/backoff.py).
* A Farm being deleted is removed from the dataplane (VIP, filter entries) and reported
  `released` only once that change succeeded, which lets the operator's finalizer go; if
  it failed the report says `released: false` with the error, and the change is retried.
  Once the Farm is gone its entry is removed from the FarmNode.
* SIGTERM/SIGINT: the agent exits and leaves the dataplane in place for its successor (a
  DaemonSet restart must not drop traffic). Take a node out with cordon or the
  vipfarm.io/drain annotation; pass --leave-on-exit to clean up on exit instead.
"""
from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from typing import Any

from dataclasses import dataclass
from typing import Callable, Mapping

from vipfarm import __version__, kubeconfig
from vipfarm.base_assignment import Base, base_from_status, decode_base, encode_base
from vipfarm.checks import Health
from vipfarm.farm_events import checks_event
from vipfarm.farm_status import CorruptAssignment, stored_assignment, stored_epoch
from vipfarm.heartbeat_keys import HeartbeatKeyError, Keyring, keyring_from_secret
from vipfarm.reports import membership_report
from vipfarm.spec import API_VERSION, GROUP, PLURAL, REPORT_PLURAL, VERSION, Farm
from vipfarm.timestamps import utc_now

from . import farmnode_report as pacing
from . import netconfig
from .backoff import Backoff
from .bpf_program import DataplaneError
from .checkers import CheckRunners
from .handover_tracker import CENSUS_INTERVAL_S, HandoverTracker
from .event_poster import EventPoster
from .heartbeat import Decision, FarmPeers, HeartbeatEngine, Membership
from .leases import LeaseWriter, adopted_lease_live
from .netconfig import InterfaceError
from .node_dataplanes import NodeDataplanes, read_local_records
from .observe import STARTUP_BUDGET_S, Observer, listen
from .udp_handover import UdpHandover
from .waker import Waker

log = logging.getLogger("vipfarm.agent.cluster")


NODE_REFRESH = 30.0   # seconds between reads of this Node's labels while they succeed
KEY_REREAD = 30.0     # seconds between reads of the heartbeat Secret
ADDRESS_REREAD = 30.0  # seconds between lookups of this node's heartbeat address per interface


# -- the heartbeat configuration, pure ----------------------------------------------------
@dataclass(frozen=True)
class SecretRef:
    name: str
    key: str
    namespace: str

    def __str__(self) -> str:
        return f"Secret {self.namespace}/{self.name} key {self.key}"


def secret_ref(env: Mapping[str, str]) -> SecretRef | None:
    """Where the heartbeat key is (the chart sets these); None when the name is not set."""
    name = env.get("VIPFARM_HEARTBEAT_SECRET", "")
    if not name:
        return None
    return SecretRef(name, env.get("VIPFARM_HEARTBEAT_SECRET_KEY") or "hmac-key",
                     env.get("POD_NAMESPACE") or env.get("VIPFARM_NAMESPACE") or "default")


# The operator's reasons for a member whose Node is cordoned or annotated vipfarm.io/drain
# (vipfarm/decisions.py): a draining member, which keeps its vote.
DRAIN_REASONS = frozenset({"Cordoned", "Draining", "Drained"})


def member_eligible(m: Mapping) -> bool:
    """status.members[].eligible, absent meaning the same as ready (vipfarm/decisions.py)."""
    return bool(m.get("eligible", m.get("ready")))


def farm_peers(farm: Farm, status: Mapping | None, node: str, address: str | None, keyring: Keyring | None,
               adopted: frozenset[int] = frozenset(), checks_fail: bool = False) -> FarmPeers | None:
    """The heartbeat configuration of one Farm this node serves, from its status; None when
    there is nothing to decide: no assignment yet, an unreadable one, or a Conflict.

    The voters are the members the operator counts eligible (weight from status.members,
    absent = 1), and this node (a candidate: the Farm selects it); the addresses are the ones
    their agents reported (this node's from `address`). Another agent's view of who votes is
    the same status, so every eligible member computes the same base and digest.

    A draining member (its Node cordoned or annotated vipfarm.io/drain: the operator's reason
    Cordoned, Draining or Drained) keeps its vote at weight 0, as a drained member does in
    standalone mode (README "Drain"): it gets no bucket, and its peers keep hearing it, so
    they take its buckets only once its filter released them (ROW_RELEASED) and keep them on
    the slow path while it says it still serves flows there (ROW_HANDING_OVER). Left out of
    their weights, it was not heard: its held connections were reset by the takers' stacks
    once their guard time (timeoutMs) ran out.

    When the operator does not count this node eligible for another reason (its Node
    NotReady, its report not seen yet), it is `withdrawn`: it gives up its buckets at once
    (the others already deal them without it) instead of when its peers' rows expire, and it
    agrees with nobody until the operator counts it again. checks_fail: this node's checkers
    keep it out (`checks_withdraw`): it stays in the view and serves nothing."""
    status = status or {}
    if status.get("phase") == "Conflict":
        return None
    try:
        assignment = stored_assignment(status)
    except CorruptAssignment:
        return None
    if assignment is None:
        return None
    members = [m for m in status.get("members") or [] if isinstance(m, Mapping) and m.get("node")]
    weights = {m["node"]: int(m.get("weight", 1)) for m in members if member_eligible(m)}
    weights.update({m["node"]: 0 for m in members if not member_eligible(m) and m.get("reason") in DRAIN_REASONS})
    eligible = node in weights
    if not eligible:
        own = next((m for m in members if m["node"] == node), {})
        weights[node] = int(own.get("weight", 1))
    addresses = {m["node"]: str(m["address"]) for m in members
                 if m["node"] in weights and m["node"] != node and m.get("address")}
    if address:
        addresses[node] = address
    hb = farm.heartbeat
    base = base_from_status(stored_epoch(status), assignment, weights)
    return FarmPeers(farm.name, node, weights, addresses, hb.port, hb.interval_ms, hb.timeout_ms,
                     keyring, farm.buckets, base, may_start_chain=False, adopted=frozenset(adopted),
                     interface=farm.interface, witness=str(getattr(hb, "witness", "") or ""),
                     withdrawn=not eligible or checks_fail)


def checks_withdraw(health: Health | None, adopted: frozenset[int]) -> bool:
    """Whether the checkers keep this node from serving a Farm (standalone mode's rule): a
    checker that has not passed yet withdraws a node that starts, but not one that restarted
    while serving (its adopted buckets stay until a checker really fails)."""
    if health is None or health.ok:
        return False
    return not (health.reason == "CheckerStarting" and adopted)


class ClusterAgent:
    def __init__(self, node: str, pin_root: str, state_root: str, refresh_s: float = 60.0,
                 leave_on_exit: bool = False, observe: tuple[str, int] | None = None):
        from kubernetes import client
        api = kubeconfig.api_client()
        self.custom = client.CustomObjectsApi(api)
        self.core = client.CoreV1Api(api)
        self.events_api = client.EventsV1Api(api)
        self.node = node
        self.refresh_s = max(30.0, refresh_s)
        self.leave_on_exit = leave_on_exit
        self.dataplanes = NodeDataplanes(node, pin_root, state_root)
        self.farms: dict[str, dict[str, Any]] = {}
        # Nothing is decided before both inputs are complete: the first full Farm LIST and
        # one successful read of this Node. See _inputs_complete().
        self.listed = False
        self.labels: dict[str, str] | None = None
        self.node_uid: str | None = None
        self.labels_at = 0.0
        # The FarmNode's status.farms as last written (None until read or created), the
        # reports wanted now, and the pacing clock (nodeagent/farmnode_report.py).
        self.written: dict[str, dict] | None = None
        self.wanted: dict[str, dict] = {}
        self.last_write = float("-inf")
        self.last_event = 0.0
        self.pending_since: float | None = None
        self._logged: dict[str, tuple] = {}
        # API failures of the main loop (node read, FarmNode read/create, status patch):
        # logged once per episode, retried with backoff (nodeagent/backoff.py). The watch
        # thread keeps its own. The clock is injectable for the unit tests.
        self.clock = time.monotonic
        self.retries = Backoff()
        self.watch_retries = Backoff()
        self.events: queue.Queue = queue.Queue()
        self.stopping = Waker()              # set by the SIGTERM handler: no lock (waker.py)
        # Failover: the heartbeat thread decides the buckets; it hands decisions and
        # memberships over through these (under self.lock) and wakes the loop (events).
        self.lock = threading.Lock()
        self.decisions: dict[str, Decision] = {}
        self.memberships: dict[str, dict] = {}
        self.leases = LeaseWriter(self.dataplanes)
        self.udp = UdpHandover(node, self.dataplanes)
        self.engine = HeartbeatEngine(node, self._on_decision, self._on_base, self.leases,
                                      base_from_chunks=_decode_or_none, base_to_bytes=encode_base,
                                      on_membership=self._on_membership, udp_flows=self.udp)
        self.handover = HandoverTracker(node, self.engine, self.udp)
        self.secret = secret_ref(os.environ)
        self.keyring: Keyring | None = None
        self.key_problem = "" if self.secret else (
            "VIPFARM_HEARTBEAT_SECRET is not set, so this agent has no heartbeat key and serves no Farm of "
            "several members; install with the Helm chart (it sets VIPFARM_HEARTBEAT_SECRET, "
            "VIPFARM_HEARTBEAT_SECRET_KEY and POD_NAMESPACE) or set them")
        self.key_at = float("-inf")
        self.address_of: Callable[[str], str | None] = netconfig.heartbeat_address
        self.addresses: dict[str, tuple[float, str | None]] = {}
        self.engine_config: list | None = None
        self.programmed: dict[str, frozenset[int]] = {}
        self.programmed_once = False
        self.adopted_at_start: dict[str, frozenset[int]] | None = None
        self._adopted_live: set[str] = set()     # farms whose adopted filter's lease still ran at start
        # Checkers (nodeagent/checkers.py): one CheckRunner per served Farm with checkers; its
        # Health withdraws this node, its transitions become the report's `checks` entries.
        self.runners = CheckRunners(node, self._on_health, self._checker_started, self._checker_removed)
        self.health: dict[str, Health] = {}
        self.checks: dict[str, dict[str, dict]] = {}
        # Their transitions as Kubernetes Events: queued by the runners' threads, handed to the
        # poster by the main loop (which knows the Farm's uid).
        self.check_events: list = []
        self.k8s_events = EventPoster(node, lambda ns, body: self.events_api.create_namespaced_event(
            ns, body, _request_timeout=10))     # an API server that does not answer costs the poster 10 s, no more
        self.observe_address = observe
        self.observer = Observer(node, "cluster", self.engine, self.runners, self.handover)

    def _publish_adopted_leases(self) -> None:
        """Before anything else: where the previous agent's leases are, so the heartbeat thread
        renews them and the adopted filter keeps taking new flows through a restart."""
        where = {}
        try:
            records = read_local_records(self.node, self.dataplanes.pin_root, self.dataplanes.state_root)
        except (OSError, AttributeError):
            return
        now = time.monotonic_ns()
        for iface, state in records.states.items():
            for farm, slot in state.slots.items():
                pin_dir = os.path.join(self.dataplanes.pin_root, self.node, iface)
                if adopted_lease_live(pin_dir, slot, now):       # else failed over meanwhile: see there
                    where[farm] = (pin_dir, slot)
                    self._adopted_live.add(farm)
        self.leases.publish(where)

    # -- heartbeat thread callbacks: queue and return ---------------------------------------
    def _on_decision(self, d: Decision) -> None:
        with self.lock:
            self.decisions[d.farm] = d
        self.events.put(("DECIDED", None))

    def _on_membership(self, m: Membership) -> None:
        """The heartbeat thread's news of a Farm's membership: queue and return."""
        report = membership_report(m.base_epoch, m.view, m.digest, m.agreed, m.withdrawn)
        with self.lock:
            self.memberships[m.farm] = report
        self.events.put(("DECIDED", None))

    def _on_health(self, farm: str, health: Health, events) -> None:
        """A CheckRunner's change (its thread): queue and return."""
        with self.lock:
            self.health[farm] = health
            entries = self.checks.setdefault(farm, {})
            for e in events:
                entry = e.to_dict()
                entries[entry["name"]] = entry
            self.check_events += events
        self.events.put(("DECIDED", None))

    def _post_check_events(self) -> None:
        """The transitions since the last call, to the Event poster (it returns at once)."""
        with self.lock:
            events, self.check_events = self.check_events, []
        for e in events:
            uid = (((self.farms.get(e.farm) or {}).get("metadata") or {}).get("uid")) or ""
            ev = checks_event(e, self.node, uid)
            if ev is not None:
                self.k8s_events.submit(ev)

    def _checker_started(self, name: str, health: Health) -> None:
        with self.lock:
            self.health[name] = health

    def _checker_removed(self, name: str) -> None:
        with self.lock:
            self.health.pop(name, None)
            self.checks.pop(name, None)

    def _on_base(self, farm: str, base: Base) -> None:
        """A newer base adopted from a peer: the Farm watch brings the same from the status."""

    # -- the heartbeat key ----------------------------------------------------------------
    def _refresh_key(self) -> None:
        """Read the heartbeat Secret every KEY_REREAD s. A failed read keeps the key in use
        (the API server may be away; the heartbeats must not stop); a missing or short key is
        said once per problem, with the fix."""
        now = self.clock()
        if self.secret is None or now - self.key_at < KEY_REREAD:
            return
        self.key_at = now
        ref = self.secret
        key = f"secret/{ref.namespace}/{ref.name} read"
        try:
            obj = self.core.read_namespaced_secret(ref.name, ref.namespace)
        except Exception as e:
            if getattr(e, "status", None) == 404:
                self._key_unusable(f"{ref} does not exist; install the chart with heartbeat.createSecret=true "
                                   f"or create it: kubectl -n {ref.namespace} create secret generic {ref.name} "
                                   f"--from-literal={ref.key}=\"$(vipfarm keygen)\"")
                self._api_ok(self.retries, key)
                return
            self._api_failed(self.retries, key, e, "keep_heartbeat_key" if self.keyring else "no_heartbeat_key")
            return
        self._api_ok(self.retries, key)
        try:
            ring = keyring_from_secret(dict(obj.data or {}), ref.key, str(ref))
        except HeartbeatKeyError as e:
            self._key_unusable(f"{e} (fix: kubectl -n {ref.namespace} edit secret {ref.name}, or reinstall "
                               f"the chart with heartbeat.key empty to generate one)")
            return
        if ring != self.keyring:
            log.info("event=heartbeat_key_loaded node=%s secret=%s/%s key=%s %s",
                     self.node, ref.namespace, ref.name, ref.key, ring.describe())
        self.keyring, self.key_problem = ring, ""

    def _key_unusable(self, problem: str) -> None:
        if problem != self.key_problem:
            log.error("event=heartbeat_key_unusable node=%s secret=%s/%s problem=%s action=serve_no_multi_node_farm",
                      self.node, self.secret.namespace, self.secret.name, _kv(problem))
        self.keyring, self.key_problem = None, problem

    def _address(self, iface: str) -> str | None:
        now = self.clock()
        at, addr = self.addresses.get(iface, (float("-inf"), None))
        if now - at >= ADDRESS_REREAD:
            try:
                addr = self.address_of(iface)
            except Exception as e:        # netlink trouble: keep the last one
                log.warning("event=heartbeat_address_failed node=%s iface=%s error=%s", self.node, iface, _kv(str(e)))
            self.addresses[iface] = (now, addr)
        return addr

    # -- API failures ---------------------------------------------------------------------
    # A key is "<object> <operation>", e.g. "node/n1 read": one episode per pair.
    def _api_failed(self, retries: Backoff, key: str, e: Exception, action: str) -> None:
        reason = _reason(e)
        f = retries.failed(key, reason, self.clock())
        if f.started:
            obj, op = key.split(" ", 1)
            log.warning("event=api_failed node=%s object=%s op=%s reason=%s action=%s retry=backoff "
                        "first_retry_in=%gs max_retry_in=%gs", self.node, obj, op, _kv(reason), action,
                        f.retry_in, retries.cap)

    def _api_ok(self, retries: Backoff, key: str) -> None:
        r = retries.succeeded(key, self.clock())
        if r is not None:
            obj, op = key.split(" ", 1)
            log.info("event=api_recovered node=%s object=%s op=%s failed_attempts=%d after=%.1fs",
                     self.node, obj, op, r.failures, r.lasted)

    # -- inputs ---------------------------------------------------------------------------
    def _node_key(self) -> str:
        return f"node/{self.node} read"

    def _refresh_labels(self) -> None:
        """Read this Node's labels: every NODE_REFRESH s, or on the backoff schedule while failing."""
        now = self.clock()
        key = self._node_key()
        if self.retries.failing(key):
            if self.retries.wait(key, now) > 0:
                return
        elif self.labels is not None and now - self.labels_at < NODE_REFRESH:
            return
        try:
            n = self.core.read_node(self.node)
        except Exception as e:
            self._api_failed(self.retries, key, e,
                             "keep_last_labels" if self.labels is not None else "wait_before_deciding")
            return
        self._api_ok(self.retries, key)
        self.labels = dict(n.metadata.labels or {})
        self.node_uid = n.metadata.uid
        self.labels_at = now

    def _watch_loop(self) -> None:
        from kubernetes import watch
        from kubernetes.client.rest import ApiException
        retries = self.watch_retries
        key = f"{PLURAL}.{GROUP} list+watch"
        watch_broke = False      # the last failure came from the watch, after a good LIST
        while not self.stopping.is_set():
            listed_ok = False
            try:
                listing = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
                rv = listing["metadata"]["resourceVersion"]
                self.events.put(("LIST", {i["metadata"]["name"]: i for i in listing.get("items", [])}))
                listed_ok = True
                if not watch_broke:
                    self._api_ok(retries, key)
                w = watch.Watch()
                for ev in w.stream(self.custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                                   resource_version=rv, timeout_seconds=60, allow_watch_bookmarks=True):
                    if self.stopping.is_set():
                        w.stop()
                        break
                    if watch_broke and ev["type"] != "ERROR":
                        watch_broke = False
                        self._api_ok(retries, key)     # the watch works again: the episode is over
                    if ev["type"] == "BOOKMARK":
                        continue
                    if ev["type"] == "ERROR":
                        status = ev.get("object") or {}
                        if isinstance(status, dict) and status.get("code") == 410:
                            break       # the watch expired: list again at once
                        # Any other error event is a failure like an exception: logged once, backed off.
                        raise RuntimeError(f"watch error event: {status}")
                    self.events.put((ev["type"], ev["object"]))
                if watch_broke:
                    watch_broke = False
                    self._api_ok(retries, key)         # a watch that ran to its timeout
            except Exception as e:
                if self.stopping.is_set():
                    break               # the agent is exiting: nothing failed
                if isinstance(e, ApiException) and e.status == 410:
                    continue            # the watch expired: list again at once
                watch_broke = listed_ok
                self._api_failed(retries, key, e, "keep_serving")
                self.stopping.wait(retries.wait(key, self.clock()))

    def _inputs_complete(self) -> bool:
        """Whether the agent may program and report: only after its first full Farm LIST and
        one read of its Node. Before that it knows too little: an empty Farm map would report
        every Farm gone (the operator then moves this node's buckets away and their
        connections reset) and program an empty node. So until then the adopted dataplane
        stays exactly as the previous agent left it, and the FarmNode is not written.

        This also orders the first NodeDataplanes.program() call after the first full LIST,
        which it relies on: that first call removes what no Farm given to it claims (the
        orphans of a Farm deleted while no agent ran)."""
        return self.listed and self.labels is not None

    # -- decisions ------------------------------------------------------------------------
    def _configure_heartbeats(self, w: "pacing.Wanted", serving_now: Mapping[str, frozenset[int]]) -> set[str]:
        """Tell the heartbeat thread the Farms it decides (only when that changed); returns them."""
        peers = []
        if self.adopted_at_start is None:
            self.adopted_at_start = dict(serving_now)
        self.runners.update_farms([i.farm for i in w.serve])
        with self.lock:
            health = dict(self.health)
        for item in w.serve:
            status = (self.farms.get(item.farm.name) or {}).get("status")
            adopted = (serving_now if not self.programmed_once else self.programmed).get(item.farm.name, frozenset())
            out = (checks_withdraw(health.get(item.farm.name), self.adopted_at_start.get(item.farm.name, frozenset()))
                   or self._unready(item.farm.name))
            p = farm_peers(item.farm, status, self.node, self._address(item.farm.interface), self.keyring, adopted,
                           checks_fail=out)
            if p is not None:
                peers.append(p)
        key = [(p.farm, dict(p.weights), dict(p.addresses), p.port, p.interval_ms, p.timeout_ms, p.keyring,
                p.base.epoch if p.base else 0, p.base.digest if p.base else b"", p.interface, p.witness, p.withdrawn)
               for p in peers]
        if key != self.engine_config:
            self.engine_config = key
            self.engine.configure(peers)
            self.observer.configured(peers)
            for p in peers:
                log.info("event=heartbeats_configured node=%s farm=%s members=%s addresses=%d base_epoch=%d key=%s",
                         self.node, p.farm, ",".join(sorted(p.weights)), len(p.addresses), p.base.epoch,
                         "yes" if p.keyring else "none")
        return {p.farm for p in peers}

    def _unready(self, farm: str) -> bool:
        """As in standalone mode: a node with no live filter of its own for the Farm (a restart
        after its peers failed it over: the adopted filter's lease had run out) is withdrawn
        until its filter is compiled and programmed, or its peers would give it buckets that
        nobody answers for while it compiles."""
        return not self.programmed_once and farm not in self._adopted_live

    def _apply(self) -> None:
        # Adopted filters whose lease had run out at start serve nothing: see _publish_adopted_leases.
        serving_now = ({f: b for f, b in self.dataplanes.serving_now().items() if f in self._adopted_live}
                       if not self.programmed_once else {})
        w = pacing.wanted(self.farms, self.labels or {}, self.node, serving_now)
        decided = self._configure_heartbeats(w, serving_now)
        self._post_check_events()
        with self.lock:
            decisions, memberships = dict(self.decisions), dict(self.memberships)
            checks = {f: dict(c) for f, c in self.checks.items()}
            health_now = dict(self.health)
        owned = {}
        for name in decided:
            d = decisions.get(name)
            if d is not None:
                owned[name] = d.buckets
            else:     # not decided yet: keep what the filter serves (adopted, or programmed before)
                owned[name] = (serving_now if not self.programmed_once else self.programmed).get(name, frozenset())
        served = [i.farm for i in w.serve if i.farm.name in owned]
        if self.handover.active():
            self.handover.census_due = True
        releasing = self.programmed_once and any(self.programmed.get(n, frozenset()) - o for n, o in owned.items())
        census = (self.handover.census(served)             # not before a flip that gives buckets up
                  if self.handover.census_wanted(not self.programmed_once) and not releasing else None)
        moving = self.handover.plan(served, owned, {n: d.peers_handing_over for n, d in decisions.items()},
                                    self.programmed if self.programmed_once else None, census)
        w = pacing.with_buckets(w, owned, moving)
        error = None
        try:
            holds = self.udp.before_flip(served, self.programmed if self.programmed_once else None, owned, moving)
            self.dataplanes.program(list(w.serve))
            self.udp.after_flip(served, holds, self.engine)
            released_any = self.programmed_once and any(self.programmed.get(i.farm.name, frozenset()) - i.owned
                                                        for i in w.serve)
            first = not self.programmed_once
            self.programmed_once = True
            self.programmed = {i.farm.name: frozenset(i.owned) for i in w.serve}
            self.handover.commit(released_any)
            for name, owned in self.programmed.items():
                self.engine.programmed(name, owned)     # lease renewals need the filter to match
            self.leases.publish({})      # every served farm now has a started interface (set_lease)
            if first and any(name not in self._adopted_live for name in decided):
                self._configure_heartbeats(w, serving_now)   # compiled: a node that started empty may serve now
        except (DataplaneError, InterfaceError, ValueError, OSError) as e:
            log.error("event=program_failed node=%s error=%s", self.node, e)
            error = str(e)
        if self.programmed_once:
            reasons = {f.name: (health_now[f.name].reason if f.name in health_now and not health_now[f.name].ok
                                else "") for f in served}
            self.observer.programmed(served, decisions, self.programmed, self.dataplanes.pins(), reasons)
        modes = {} if error else {i.farm.interface: self.dataplanes.mode_of(i.farm.interface) for i in w.serve}
        reports = pacing.settled(w, error, modes)
        addresses = {i.farm.name: self._address(i.farm.interface) for i in w.serve}
        multi = {i.farm.name for i in w.serve if _members_of(self.farms.get(i.farm.name)) > 1}
        reports = pacing.with_heartbeats(reports, addresses, {n: memberships[n] for n in decided if n in memberships},
                                         self.key_problem if self.keyring is None else "", multi)
        for name, entries in checks.items():
            if name in reports and entries:
                reports[name]["checks"] = entries
        for name in reports:
            if self.handover.flows_left(name):
                reports[name]["flowsLeft"] = self.handover.flows_left(name)
        for name in decided:
            d = decisions.get(name)
            if d is not None and self._logged.get(name) != (d.buckets, d.view, d.agreed):
                self._logged[name] = (d.buckets, d.view, d.agreed)
                log.info("event=buckets_programmed node=%s farm=%s buckets=%d view=%s agreed=%s base_epoch=%d "
                         "released=%d withheld=%d", self.node, name, len(d.buckets), ",".join(sorted(d.view)) or "-",
                         str(d.agreed).lower(), d.base_epoch, d.released, d.withheld)
        if reports != self.wanted:
            for name, r in sorted(reports.items()):
                if (self.wanted.get(name) or {}).get("ready") != r.get("ready") or \
                        (self.wanted.get(name) or {}).get("reason") != r.get("reason") or \
                        (self.wanted.get(name) or {}).get("released") != r.get("released"):
                    log.info("event=report_changed farm=%s node=%s ready=%s reason=%s epoch=%s released=%s",
                             name, self.node, r.get("ready"), r.get("reason"), r.get("appliedEpoch"),
                             r.get("released", False))
            self.wanted = reports

    # -- the FarmNode -----------------------------------------------------------------------
    def _farmnode_keys(self) -> tuple[str, str]:
        return f"farmnode/{self.node} read/create", f"farmnode/{self.node}/status patch"

    def _report_delay(self) -> float:
        """Seconds until the FarmNode should be written (0: now)."""
        now = self.clock()
        written = self.written if self.written is not None else {}
        pending = bool(pacing.farms_patch(written, self.wanted)) or self.written is None
        if pending and self.pending_since is None:
            self.pending_since = now
        if not pending:
            self.pending_since = None
        paced = pacing.seconds_until_write(
            now, pending=pending, urgent=self.written is None or pacing.is_urgent(written, self.wanted),
            last_write=self.last_write, last_event=self.last_event,
            pending_since=self.pending_since if self.pending_since is not None else now,
            refresh_s=self.refresh_s)
        return max([paced] + [self.retries.wait(k, now) for k in self._farmnode_keys()])

    def _write_report(self) -> None:
        """One merge patch of the FarmNode status: the changed entries, counts, reportedAt."""
        from kubernetes.client.rest import ApiException
        read_key, patch_key = self._farmnode_keys()
        for attempt in (1, 2):
            if self.written is None:
                try:
                    self.written = self._read_or_create_farmnode()
                except Exception as e:
                    self._api_failed(self.retries, read_key, e, "retry_report")
                    return
                self._api_ok(self.retries, read_key)
            try:
                self._patch_farmnode(self.written)
                break
            except ApiException as e:
                if e.status == 404 and attempt == 1:
                    log.info("event=farmnode_missing node=%s action=recreate", self.node)
                    self.written = None          # deleted under us: start again
                    continue
                self._api_failed(self.retries, patch_key, e, "retry_report")
                return
            except Exception as e:
                self._api_failed(self.retries, patch_key, e, "retry_report")
                return
        self._api_ok(self.retries, patch_key)
        self.written = {k: dict(v) for k, v in self.wanted.items()}
        self.pending_since = None
        self.last_write = self.clock()

    def _patch_farmnode(self, written: dict[str, dict]) -> None:
        """Merge-patch what differs from `written` (the FarmNode as last known) to the wanted reports."""
        body = pacing.status_patch(pacing.farms_patch(written, self.wanted), self.wanted, utc_now(), __version__)
        self.custom.patch_cluster_custom_object_status(GROUP, VERSION, REPORT_PLURAL, self.node, body,
                                                       _content_type="application/merge-patch+json")

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
            log.info("event=farmnode_created node=%s", self.node)
        return {k: dict(v) for k, v in ((obj.get("status") or {}).get("farms") or {}).items() if v}

    # -- main loop ------------------------------------------------------------------------
    def _next_wake(self) -> float:
        """How long the main loop may sleep waiting for a watch event."""
        if self._inputs_complete() and self.handover.active():
            return min(CENSUS_INTERVAL_S, max(0.05, self._report_delay()))
        if self._inputs_complete():
            return max(0.05, min(5.0, self._report_delay()))
        if self.labels is None:        # the Node read is failing: wake for its retry
            return max(0.05, min(5.0, self.retries.wait(self._node_key(), self.clock()) or 5.0))
        return 5.0                     # the LIST wakes the loop when it arrives

    def run(self) -> int:
        server = listen(self.observe_address, self.observer)   # before any change: a taken port stops here
        try:
            return self._run()
        finally:
            if server is not None:
                server.stop()

    def _run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self._publish_adopted_leases()
        self.engine.start()         # heartbeats first: nothing else the agent does may delay them
        self.k8s_events.start()
        self._refresh_key()
        self._refresh_labels()
        threading.Thread(target=self._watch_loop, name="farm-watch", daemon=True).start()
        log.info("event=agent_ready node=%s mode=cluster", self.node)
        print(f"vipfarm-agent: node {self.node} in cluster mode", flush=True)
        started = self.clock()
        said_waiting = acting = False
        while not self.stopping.is_set():
            wake_s = self._next_wake()
            # a first programming compiles the filter: allow it more than 3 wakes
            self.observer.main_loop_alive(wake_s if self.programmed_once else max(wake_s, STARTUP_BUDGET_S))
            try:
                kind, obj = self.events.get(timeout=wake_s)
            except queue.Empty:
                pass                   # a timeout: retries a failed dataplane change below
            else:
                self._absorb(kind, obj)
                time.sleep(0.05)       # coalesce bursts of watch events
                while True:
                    try:
                        self._absorb(*self.events.get_nowait())
                    except queue.Empty:
                        break
                self.last_event = self.clock()
            self._refresh_labels()
            self._refresh_key()
            if not self._inputs_complete():
                if not said_waiting:
                    said_waiting = True
                    log.info("event=waiting_for_inputs node=%s farm_list=%s node_labels=%s "
                             "action=dataplane_left_as_is report=none", self.node,
                             "received" if self.listed else "pending",
                             "read" if self.labels is not None else "pending")
                continue
            if not acting:
                acting = True
                log.info("event=inputs_complete node=%s farms=%d waited=%.2fs action=program_and_report",
                         self.node, len(self.farms), self.clock() - started)
            self._apply()
            if self._report_delay() == 0:
                self._write_report()
        # No goodbye: a DaemonSet restart must not make the peers take this node's buckets;
        # the next agent adopts the pins and renews the lease.
        self.engine.stop(goodbye=self.leave_on_exit)
        self.runners.stop_all()
        self.k8s_events.stop()
        if self.leave_on_exit:
            self.dataplanes.stop()
            self.udp.stop()
        self.leases.close()
        log.info("event=agent_stopped node=%s dataplane=%s", self.node,
                 "removed" if self.leave_on_exit else "left in place for the next agent")
        return 0

    def stop(self) -> None:
        """Make run() return soon (from another thread; a signal only sets `stopping`, and the
        loop notices within its 5 s wait)."""
        self.stopping.set()
        self.events.put(("STOP", None))

    def _absorb(self, kind: str, obj) -> None:
        if kind in ("STOP", "DECIDED"):
            return
        if kind == "LIST":
            self.farms = dict(obj)
            self.listed = True
        elif kind == "DELETED":
            self.farms.pop(obj["metadata"]["name"], None)
        else:
            self.farms[obj["metadata"]["name"]] = obj


def _members_of(body) -> int:
    """How many members a Farm's status lists (a farm of one needs no heartbeat key)."""
    return len(((body or {}).get("status") or {}).get("members") or [])


def _decode_or_none(data: bytes) -> Base | None:
    try:
        return decode_base(data)
    except ValueError:
        return None


def _one_line(text: str, limit: int = 200) -> str:
    return " ".join(text.split())[:limit]


def _reason(e: Exception) -> str:
    """Why an API call failed, in one short line: the HTTP status and the server's message,
    or the exception (connection refused, timeout ...)."""
    status = getattr(e, "status", None)
    if status:
        message = ""
        try:
            message = json.loads(getattr(e, "body", "") or "{}").get("message", "")
        except (ValueError, TypeError, AttributeError):
            pass
        head = f"HTTP {status} {getattr(e, 'reason', '') or ''}".strip()
        return _one_line(f"{head}: {message}" if message else head)
    return _one_line(f"{type(e).__name__}: {e}")


def _kv(value: str) -> str:
    """A log value: quoted when it has spaces, so `key=value` stays one token."""
    value = value.replace('"', "'")
    return f'"{value}"' if any(c.isspace() for c in value) else value


def run_cluster_agent(args) -> int:
    node = args.node or os.environ.get("NODE_NAME")
    if not node:
        print("vipfarm-agent: cluster mode needs the node name: set NODE_NAME (the DaemonSet sets it "
              "from spec.nodeName) or pass --node", flush=True)
        return 2
    return ClusterAgent(node, args.pin_root, args.state_root, args.refresh,
                        args.leave_on_exit, getattr(args, "observe", None)).run()
