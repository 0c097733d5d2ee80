"""Cluster tier: one real etcd + kube-apiserver (RBAC, ServiceAccount tokens) per test session.

There is no controller-manager or scheduler: create ServiceAccounts yourself, expect deleted
namespaces to stay Terminating, and expect pods to stay Pending.
"""
from __future__ import annotations

import pytest

from tests.support.apiserver import ApiServer, HarnessError


@pytest.fixture(scope="session")
def apiserver():
    try:
        api = ApiServer()
    except HarnessError as e:
        pytest.fail(f"could not start the test API server: {e}", pytrace=False)
    try:
        yield api
    finally:
        api.close()
