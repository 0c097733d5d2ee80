"""How every vipfarm process reaches the API server: the one place that loads credentials.

In a pod, the ServiceAccount's in-cluster credentials; elsewhere the kubeconfig that
KUBECONFIG (or ~/.kube/config) names. The kubernetes client is imported here, and only when
called, so the rest of the core never touches it. This is the core's one piece of I/O that
two adapters share (the agent and the operator); tests/unit/test_layout.py allows it here
and nowhere else in the core.
"""
from __future__ import annotations

import os


class NoCredentials(RuntimeError):
    """Neither in-cluster credentials nor a kubeconfig could be loaded."""


def client_configuration(pool_size: int | None = None):
    """A kubernetes.client.Configuration for this process (in-cluster first, then the kubeconfig)."""
    from kubernetes import client, config
    cfg = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=cfg)
    except config.ConfigException as in_cluster:
        try:
            # KUBECONFIG is read now: the client library reads it once, when first imported.
            path = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
            config.load_kube_config(config_file=path, client_configuration=cfg)
        except (config.ConfigException, OSError) as kubeconfig:
            raise NoCredentials(
                f"cannot reach the Kubernetes API: not in a pod ({in_cluster}) and no usable kubeconfig "
                f"({kubeconfig}); run in the cluster with the chart's ServiceAccount, or set KUBECONFIG") from None
    if pool_size:
        cfg.connection_pool_maxsize = pool_size
    return cfg


def api_client(pool_size: int | None = None):
    """A kubernetes.client.ApiClient built on client_configuration()."""
    from kubernetes import client
    return client.ApiClient(client_configuration(pool_size))
