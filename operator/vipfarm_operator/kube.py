"""The operator's Kubernetes API calls (the kubernetes client), kept apart from decisions."""
from __future__ import annotations

import logging
import threading

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from vipfarm.spec import GROUP, PLURAL, VERSION

log = logging.getLogger("vipfarm.operator.kube")
_api = None
_api_lock = threading.Lock()


def api() -> client.CustomObjectsApi:
    global _api
    with _api_lock:
        if _api is None:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            cfg = client.Configuration.get_default_copy()
            cfg.connection_pool_maxsize = 16      # the node fan-out keeps 8 writes in flight
            _api = client.CustomObjectsApi(client.ApiClient(cfg))
        return _api


def get_farm(name: str) -> dict | None:
    try:
        return api().get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise


def patch_status(name: str, status: dict) -> None:
    try:
        api().patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name, {"status": status},
                                                 _content_type="application/merge-patch+json")
    except ApiException as e:
        if e.status == 404:
            return      # deleted meanwhile
        raise kopf.TemporaryError(f"writing the status of Farm {name} failed: {e.status} {e.reason}", delay=2)


def post_event(body: dict, reason: str, message: str, type_: str = "Normal") -> None:
    try:
        kopf.event(body, type=type_, reason=reason, message=message)
    except Exception as e:   # events are best effort; never fail a reconcile for one
        log.warning("event=event_post_failed reason=%s error=%s", reason, e)
