"""A farm's base assignment: the buckets with every configured member live. Pure.

The buckets a node serves are `agreement.effective_assignment(base, weights, view)`, so the
base is what every member must hold alike. It changes only with the configuration (members,
weights, bucket count), never with liveness:

  * cluster mode: the base is the operator's assignment in the Farm status, with its epoch;
  * standalone mode: a chain. The first base is assign(None, members); each configuration
    change (SIGHUP with an edited file) is `next_base(previous, ...)` = assign(previous, new
    members), epoch + 1, for minimal movement. Each agent persists its base
    (nodeagent/base_store.py), so a restart continues the chain instead of starting a new one
    (which is how a 3 -> 2 change by SIGHUP followed by one agent restart used to leave 170 of
    1024 buckets with two owners and 170 with none). An agent with no persisted base asks its
    peers (heartbeat BaseRequest) before it computes a first one, and any member that sees a
    peer advertise a newer base (higher epoch, then higher digest) for its own configuration
    adopts it, so two histories converge on one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Mapping

from .assignment import Assignment, Member, assign


def config_digest(weights: Mapping[str, int], buckets: int) -> bytes:
    """8 bytes naming a configuration: bucket count and (member, weight) pairs."""
    h = hashlib.sha256(b"vipfarm-config:%d" % buckets)
    for name in sorted(weights):
        h.update(b"\0%s=%d" % (name.encode(), weights[name]))
    return h.digest()[:8]


@dataclass(frozen=True)
class Base:
    epoch: int
    config: bytes                 # config_digest of the configuration it was computed for
    assignment: Assignment

    @property
    def digest(self) -> bytes:
        h = hashlib.sha256(b"vipfarm-base:" + self.config + b"\0" + self.assignment.encode().encode())
        return h.digest()[:8]

    def newer_than(self, epoch: int, digest: bytes) -> bool:
        return (self.epoch, self.digest) > (epoch, digest)


def _members(weights: Mapping[str, int]) -> list[Member]:
    return [Member(n, w, True) for n, w in sorted(weights.items())]


def first_base(weights: Mapping[str, int], buckets: int) -> Base:
    return Base(1, config_digest(weights, buckets), assign(None, _members(weights), buckets))


def next_base(previous: Base | None, weights: Mapping[str, int], buckets: int) -> Base:
    """The base for this configuration, continuing `previous` (unchanged when the configuration is)."""
    if previous is None:
        return first_base(weights, buckets)
    config = config_digest(weights, buckets)
    if previous.config == config:
        return previous
    return Base(previous.epoch + 1, config, assign(previous.assignment, _members(weights), buckets))


def base_from_status(epoch: int, assignment: Assignment, weights: Mapping[str, int]) -> Base:
    """Cluster mode: the operator's assignment is the base."""
    return Base(epoch, config_digest(weights, assignment.buckets), assignment)


def encode_base(base: Base) -> bytes:
    """The base as bytes: what an agent persists and what peers send in BaseChunks."""
    return json.dumps({"epoch": base.epoch, "config": base.config.hex(), "members": list(base.assignment.members),
                       "assignment": base.assignment.encode()}, sort_keys=True).encode()


def decode_base(data: bytes) -> Base:
    """encode_base's inverse; ValueError naming what is wrong."""
    try:
        raw = json.loads(data.decode())
        epoch, config, members, text = raw["epoch"], bytes.fromhex(raw["config"]), raw["members"], raw["assignment"]
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise ValueError(f"not a base assignment record ({e})") from None
    if not isinstance(epoch, int) or isinstance(epoch, bool) or epoch < 1 or len(config) != 8 \
            or not isinstance(members, list) or not all(isinstance(m, str) for m in members) \
            or members != sorted(set(members)) or not isinstance(text, str):
        raise ValueError("not a base assignment record (a field has the wrong type or value)")
    return Base(epoch, config, Assignment.decode(members, text))
