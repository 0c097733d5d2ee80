"""Timestamps as the Kubernetes API writes them."""
from __future__ import annotations

import datetime


def rfc3339(moment: datetime.datetime) -> str:
    """RFC 3339 UTC with a Z and whole seconds, as status fields need (the CRD rejects a naive time)."""
    return (moment.astimezone(datetime.timezone.utc).replace(microsecond=0)
            .isoformat().replace("+00:00", "Z"))


def utc_now() -> str:
    return rfc3339(datetime.datetime.now(datetime.timezone.utc))
