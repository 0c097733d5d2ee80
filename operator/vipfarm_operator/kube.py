"""The operator's Kubernetes API calls (the kubernetes client), kept apart from decisions.

Every write (a Farm status patch, an Event) asks replica.active() right before it is sent and
raises Standby instead when this replica is not the active one (Kopf peering): the threads that
write are ours, and Kopf's pause does not stop them. Reads are allowed in every replica.
"""
from __future__ import annotations

import datetime
import logging
import os
import threading

from kubernetes import client
from kubernetes.client.rest import ApiException

from vipfarm import kubeconfig
from vipfarm.spec import GROUP, PLURAL, REPORT_PLURAL, VERSION

from . import metrics, replica

log = logging.getLogger("vipfarm.operator.kube")
COMPONENT = "vipfarm-operator"
_clients: dict[str, object] = {}
_lock = threading.Lock()


class Standby(RuntimeError):
    """A write was refused here because this replica is not the active one."""


def _must_be_active(what: str) -> None:
    if not replica.active():
        raise Standby(f"not {what}: this operator replica is a standby (Kopf peering), the active one writes")


def _api_client() -> client.ApiClient:
    with _lock:
        if "api" not in _clients:
            _clients["api"] = kubeconfig.api_client(pool_size=16)   # 8 workers keep 8 writes in flight
        return _clients["api"]


def custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_api_client())


def core() -> client.CoreV1Api:
    return client.CoreV1Api(_api_client())


def list_farms() -> list[dict]:
    return custom().list_cluster_custom_object(GROUP, VERSION, PLURAL).get("items", [])


def list_farmnodes() -> list[dict]:
    return custom().list_cluster_custom_object(GROUP, VERSION, REPORT_PLURAL).get("items", [])


def ping() -> None:
    """A cheap read (one FarmNode at most) that raises when the API server does not answer."""
    custom().list_cluster_custom_object(GROUP, VERSION, REPORT_PLURAL, limit=1, _request_timeout=5)


def list_nodes() -> list[dict]:
    return [_api_client().sanitize_for_serialization(n) for n in core().list_node().items]


def exists(kind: str, name: str) -> bool:
    """Whether the object is there (any error but 404 counts as there: never drop on doubt)."""
    try:
        if kind == "Node":
            core().read_node(name)
        else:
            custom().get_cluster_custom_object(GROUP, VERSION, PLURAL if kind == "Farm" else REPORT_PLURAL, name)
        return True
    except ApiException as e:
        return e.status != 404


def patch_status(name: str, status: dict) -> bool:
    """Merge-patch a Farm's status; False when the Farm is gone (404). Other errors raise,
    Standby when this replica is not the active one."""
    try:
        _must_be_active(f"writing the status of Farm {name}")
    except Standby:
        metrics.api_write("farms/status", "patch", "standby")
        raise
    try:
        custom().patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name, {"status": status},
                                                    _content_type="application/merge-patch+json")
        metrics.api_write("farms/status", "patch", "ok")
        return True
    except ApiException as e:
        if e.status == 404:
            metrics.api_write("farms/status", "patch", "not_found")
            return False
        metrics.api_write("farms/status", "patch", "error")
        raise RuntimeError(f"writing the status of Farm {name} failed: {e.status} {e.reason}") from None
    except Exception:
        metrics.api_write("farms/status", "patch", "error")
        raise


def post_event(body: dict, reason: str, message: str, type_: str = "Normal") -> None:
    """A core/v1 Event about a Farm. Farms are cluster scoped, so their events go to
    `default`, as kubectl expects (`kubectl describe farm` finds them there). Raises Standby
    when this replica is not the active one."""
    md = body.get("metadata") or {}
    _must_be_active(f"posting Event {reason} about Farm {md.get('name')}")
    now = datetime.datetime.now(datetime.timezone.utc)
    ev = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name=f"{md.get('name', 'farm')}."),
        involved_object=client.V1ObjectReference(api_version=body.get("apiVersion") or f"{GROUP}/{VERSION}",
                                                 kind=body.get("kind") or "Farm", name=md.get("name"),
                                                 uid=md.get("uid")),
        reason=reason, message=message[:1024], type=type_, count=1,
        first_timestamp=now, last_timestamp=now, source=client.V1EventSource(component=COMPONENT),
        reporting_component=COMPONENT, reporting_instance=os.environ.get("POD_NAME") or COMPONENT)
    try:
        core().create_namespaced_event("default", ev)
        metrics.api_write("events", "create", "ok")
    except Exception as e:   # events are best effort; never fail a reconcile for one
        metrics.api_write("events", "create", "error")
        log.warning("event=event_post_failed reason=%s error=%s", reason, str(e).replace("\n", " ")[:200])
