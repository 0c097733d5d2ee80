"""Each farm's base assignment on disk: <state-root>/<node>/bases/<farm>.json.

Written on every change of base (tmp + fsync + rename) so that an agent restart continues the
farm's chain (vipfarm/base_assignment.py). A record that cannot be read is moved aside and the
agent then asks its peers, as it does with no record.
"""
from __future__ import annotations

import logging
import os

from vipfarm.base_assignment import Base, decode_base, encode_base

from .atomic_file import atomic_write

log = logging.getLogger("vipfarm.state")


def base_path(state_root: str, node: str, farm: str) -> str:
    return os.path.join(state_root, node, "bases", f"{farm}.json")


def load_base(state_root: str, node: str, farm: str) -> Base | None:
    path = base_path(state_root, node, farm)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return decode_base(data)
    except ValueError as e:
        aside = f"{path}.corrupt"
        os.replace(path, aside)
        log.error("event=base_record_unreadable path=%s moved_to=%s error=%r action=ask_peers", path, aside, str(e))
        return None


def save_base(state_root: str, node: str, farm: str, base: Base) -> None:
    atomic_write(base_path(state_root, node, farm), encode_base(base))
