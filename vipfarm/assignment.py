"""Bucket ownership: one pure, deterministic function shared by every node and the operator.

assign(previous, members, buckets) gives each of the B buckets one live member (or none when
no member is live). Its guarantees, each proven by tests/unit/test_assignment.py:
  * balance: a live member with weight w holds floor(B*w/W) or floor(B*w/W)+1 buckets;
  * minimal movement: among all balanced outcomes it moves the fewest buckets from
    `previous` (orphaned buckets always move; a member keeps what its target allows);
  * determinism: the result depends only on the inputs, not on their order.
"""
from __future__ import annotations

import base64
import zlib
from array import array
from dataclasses import dataclass
from typing import Iterable, Sequence

NO_OWNER = -1
_WIRE_NONE = 0xFFFF
_ENCODING = "z1"


@dataclass(frozen=True)
class Member:
    name: str
    weight: int = 1
    live: bool = True


@dataclass(frozen=True)
class Assignment:
    """owners[b] indexes `members` (sorted names), or is NO_OWNER."""
    members: tuple[str, ...]
    owners: tuple[int, ...]

    @property
    def buckets(self) -> int:
        return len(self.owners)

    def owner_of(self, bucket: int) -> str | None:
        i = self.owners[bucket]
        return None if i == NO_OWNER else self.members[i]

    def owned_by(self, name: str) -> list[int]:
        if name not in self.members:
            return []
        idx = self.members.index(name)
        return [b for b, o in enumerate(self.owners) if o == idx]

    def counts(self) -> dict[str, int]:
        out = {m: 0 for m in self.members}
        for o in self.owners:
            if o != NO_OWNER:
                out[self.members[o]] += 1
        return out

    def owner_names(self) -> list[str | None]:
        return [None if o == NO_OWNER else self.members[o] for o in self.owners]

    def encode(self) -> str:
        """Compact text form for the Farm status: 'z1:' + base64(zlib(u16 owners))."""
        arr = array("H", (_WIRE_NONE if o == NO_OWNER else o for o in self.owners))
        if arr.itemsize != 2:  # pragma: no cover - array('H') is 2 bytes on every CPython
            raise RuntimeError("unexpected array item size")
        raw = arr.tobytes() if _little_endian() else _swapped(arr)
        return f"{_ENCODING}:" + base64.b64encode(zlib.compress(raw, 9)).decode()

    @classmethod
    def decode(cls, members: Sequence[str], text: str) -> "Assignment":
        prefix, _, body = text.partition(":")
        if prefix != _ENCODING:
            raise ValueError(f"assignment encoding {prefix!r} is not {_ENCODING!r}")
        try:
            raw = zlib.decompress(base64.b64decode(body, validate=True))
        except (ValueError, zlib.error) as e:
            raise ValueError(f"assignment data is corrupt: {e}") from e
        if len(raw) % 2:
            raise ValueError("assignment data has an odd number of bytes")
        arr = array("H")
        arr.frombytes(raw)
        if not _little_endian():  # pragma: no cover
            arr.byteswap()
        owners = tuple(NO_OWNER if v == _WIRE_NONE else v for v in arr)
        for o in owners:
            if o != NO_OWNER and o >= len(members):
                raise ValueError(f"assignment names member #{o} but only {len(members)} are listed")
        return cls(tuple(members), owners)


def _little_endian() -> bool:
    import sys
    return sys.byteorder == "little"


def _swapped(arr: array) -> bytes:  # pragma: no cover
    a = array(arr.typecode, arr)
    a.byteswap()
    return a.tobytes()


def targets(members: Sequence[Member], buckets: int,
            current: dict[str, int] | None = None) -> dict[str, int]:
    """How many buckets each live, weighted member should hold.

    Every live member gets floor(B*w/W); the R leftover buckets go one each to the members
    that already hold more than their floor (so they shed one bucket fewer), then to the
    largest fractional shares, then by name. Members that are dead or weight 0 get 0.
    """
    current = current or {}
    live = sorted((m for m in members if m.live and m.weight > 0), key=lambda m: m.name)
    out = {m.name: 0 for m in members}
    total = sum(m.weight for m in live)
    if not live:
        return out
    for m in live:
        out[m.name] = buckets * m.weight // total
    leftover = buckets - sum(out[m.name] for m in live)
    order = sorted(live, key=lambda m: (
        0 if current.get(m.name, 0) > out[m.name] else 1,
        -((buckets * m.weight) % total),
        m.name,
    ))
    for m in order[:leftover]:
        out[m.name] += 1
    return out


def assign(previous: Assignment | None, members: Iterable[Member], buckets: int) -> Assignment:
    """The new assignment. `previous` with another bucket count is ignored."""
    members = list(members)
    names = sorted({m.name for m in members})
    if len(names) != len(members):
        raise ValueError("member names must be unique")
    index = {n: i for i, n in enumerate(names)}
    if previous is not None and previous.buckets != buckets:
        previous = None
    prev_names = previous.owner_names() if previous is not None else [None] * buckets

    current: dict[str, int] = {}
    for n in prev_names:
        if n is not None:
            current[n] = current.get(n, 0) + 1
    want = targets(members, buckets, current)

    owners = [NO_OWNER] * buckets
    kept = {n: 0 for n in names}
    free: list[int] = []
    for b, n in enumerate(prev_names):
        if n is not None and n in want and kept[n] < want[n]:
            owners[b] = index[n]
            kept[n] += 1
        else:
            free.append(b)

    needy = [(n, want[n] - kept[n]) for n in names if want[n] > kept[n]]
    it = iter(free)
    for n, deficit in needy:
        for _ in range(deficit):
            owners[next(it)] = index[n]
    return Assignment(tuple(names), tuple(owners))


def moved(before: Assignment | None, after: Assignment) -> int:
    """How many buckets changed owner (by name) between two assignments."""
    if before is None or before.buckets != after.buckets:
        return sum(1 for o in after.owners if o != NO_OWNER)
    a, b = before.owner_names(), after.owner_names()
    return sum(1 for x, y in zip(a, b) if x != y)
