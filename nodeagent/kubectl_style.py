"""API errors as kubectl prints them, for the commands that talk to the API server
(`vipfarm drain|undrain`, `vipfarm status --cluster`)."""
from __future__ import annotations

import json


def api_error_text(e) -> str:
    """An ApiException as kubectl prints it: Error from server (Reason): message."""
    try:
        status = json.loads(e.body or "")
    except (TypeError, ValueError):
        status = None
    if isinstance(status, dict) and status.get("message"):
        return f"Error from server ({status.get('reason') or e.reason}): {status['message']}"
    return f"Error from server ({e.reason}): HTTP {e.status} {(e.body or '').strip()[:200]}"
