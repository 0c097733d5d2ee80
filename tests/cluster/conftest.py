"""Cluster tier: one real etcd + kube-apiserver (RBAC, ServiceAccount tokens) per test session.

There is no controller-manager or scheduler: create ServiceAccounts yourself, expect deleted
namespaces to stay Terminating, and expect pods to stay Pending.

The API server keeps an audit log (ApiServer.audit_events()): every request a ServiceAccount
makes (the operators' and agents' tokens) and every write by anyone, at Metadata level, so a
test can say which process wrote what (tests.support.apiserver.audit_credential/token_id).
"""
from __future__ import annotations

import pytest

from tests.support.apiserver import ApiServer, HarnessError


AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1", "kind": "Policy", "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}


@pytest.fixture(scope="session")
def apiserver():
    try:
        api = ApiServer(audit_policy=AUDIT_POLICY)
    except HarnessError as e:
        pytest.fail(f"could not start the test API server: {e}", pytrace=False)
    try:
        yield api
    finally:
        api.close()
