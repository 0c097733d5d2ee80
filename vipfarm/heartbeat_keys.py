"""The heartbeat keys: the shared HMAC-SHA256 secret every member of a farm signs with.

A key is at least MIN_KEY_BYTES bytes. Its key id (4 bytes of a hash of it) travels in every
heartbeat so a receiver can tell which of its accepted keys to check the MAC with; the id
names a key without revealing it and is safe to log and report. Key material itself never
appears in an error, a log line or a repr.

A keyring is the signing key plus the keys accepted from peers (the signing key among them).
It comes from one of two places, with the same rules:

* a key file (standalone mode, spec.heartbeat.keyFile), parsed by parse_key_text: one key per
  line, blank lines and lines starting with '#' ignored, surrounding whitespace stripped. The
  first key is the signing key; a second key, if present, is also accepted; a third is an
  error. `vipfarm keygen --out FILE` writes a fresh file.
* a Kubernetes Secret (cluster mode, the chart's heartbeat Secret), by keyring_from_secret: the
  signing key is data[<name>]; data[<name>-previous], when present, is also accepted. Each value
  holds one key, in the key-file format (so a file from `vipfarm keygen` can be stored as is).

Key rotation, without losing a heartbeat. Each agent loads a new keyring at its own moment, so
the rule is: every agent must accept a key before any agent signs with it, and every agent must
have stopped signing with a key before any agent stops accepting it. Three changes, each made
only once every agent has loaded the one before (so an agent should log, and report,
Keyring.describe() - the ids of the key it signs with and of those it accepts - whenever it
loads a keyring). `-previous` is the second accepted key: it holds the next key in step 1 and
the old one in step 2.

  1. accept the new key:   <name> = OLD, <name>-previous = NEW  (key file: OLD, then NEW)
     Everyone still signs with OLD; agents that loaded this also accept NEW.
  2. sign with it:         <name> = NEW, <name>-previous = OLD  (key file: NEW, then OLD)
     Agents that loaded this sign with NEW, which every agent of step 1 or 2 accepts; agents
     still on step 1 sign with OLD, which step-2 agents accept as the previous key.
  3. drop the old key:     <name> = NEW, no <name>-previous     (key file: NEW alone)
     Every agent already signs with NEW.

Swapping the key in one step (<name> = NEW, <name>-previous = OLD straight away) loses the
heartbeats of the agents that switched, at every agent that has not yet loaded the change,
for as long as the change takes to reach them.
"""
from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field

MIN_KEY_BYTES = 32
KEY_ID_BYTES = 4
GENERATED_KEY_BYTES = 48
MAX_KEYS = 2            # the signing key and one more accepted during a rotation
PREVIOUS_SUFFIX = "-previous"

KEY_FILE_HEADER = ("# vipfarm heartbeat key (HMAC-SHA256), made by `vipfarm keygen`: keep it secret "
                   "and give every member of the farm the same file\n")


class HeartbeatKeyError(ValueError):
    """A key file or Secret that cannot be used: the message names the source, what is wrong
    and the fix, and never holds key material."""


@dataclass(frozen=True)
class Key:
    secret: bytes = field(repr=False)

    def __post_init__(self):
        if not isinstance(self.secret, bytes):
            raise TypeError(f"Key.secret must be bytes, got {type(self.secret).__name__}")
        if len(self.secret) < MIN_KEY_BYTES:
            raise HeartbeatKeyError(f"a heartbeat key must be at least {MIN_KEY_BYTES} bytes, got "
                                    f"{len(self.secret)}; generate one with `vipfarm keygen`")

    @property
    def key_id(self) -> bytes:
        return hashlib.sha256(b"vipfarm-key-id:" + self.secret).digest()[:KEY_ID_BYTES]

    def __repr__(self) -> str:
        return f"Key(key_id={self.key_id.hex()})"


@dataclass(frozen=True)
class Keyring:
    signing: Key
    accepted: tuple[Key, ...]

    def __post_init__(self):
        if self.signing not in self.accepted:
            raise ValueError(f"Keyring: the signing key {self.signing.key_id.hex()} must be among the accepted "
                             f"keys ({', '.join(self.key_ids)})")
        if len(set(self.accepted)) != len(self.accepted):
            raise ValueError(f"Keyring: a key is listed twice among the accepted keys ({', '.join(self.key_ids)}); "
                             "list each once (Keyring.of drops duplicates)")
        if len({k.key_id for k in self.accepted}) != len(self.accepted):
            raise HeartbeatKeyError(f"two different accepted keys share the key id ({', '.join(self.key_ids)}), so "
                                    "a receiver cannot tell them apart; generate another key with `vipfarm keygen`")

    @classmethod
    def of(cls, signing: Key, *also: Key) -> Keyring:
        """The keyring that signs with `signing` and accepts it and `also` (duplicates dropped)."""
        accepted = [signing]
        for k in also:
            if k not in accepted:
                accepted.append(k)
        return cls(signing, tuple(accepted))

    def find(self, key_id: bytes) -> Key | None:
        for k in self.accepted:
            if k.key_id == key_id:
                return k
        return None

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The accepted keys' ids in hex, signing key first: safe to log and report."""
        return tuple(k.key_id.hex() for k in self.accepted)

    def describe(self) -> str:
        """For a log line: `signing_key=<id> accepted_keys=<id>,<id>`."""
        return f"signing_key={self.signing.key_id.hex()} accepted_keys={','.join(self.key_ids)}"


def _keys_in(text: str, source: str, fix: str) -> list[tuple[int, bytes]]:
    """(line number, key) of every key line in `text`, each checked for length."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            key = stripped.encode("utf-8")
        except UnicodeEncodeError:
            raise HeartbeatKeyError(f"{source} line {n}: is not UTF-8 text; a heartbeat key is a line of text; "
                                    f"{fix}") from None
        if len(key) < MIN_KEY_BYTES:
            raise HeartbeatKeyError(f"{source} line {n}: the key is {len(key)} bytes, a heartbeat key needs at "
                                    f"least {MIN_KEY_BYTES}; {fix}")
        out.append((n, key))
    return out


def parse_key_text(text: str, source: str) -> Keyring:
    """The keyring a key file holds (see the module docstring for the format); `source` names
    the file in errors."""
    fix = f"generate one with `vipfarm keygen --out {source}`"
    keys = _keys_in(text, source, fix)
    if not keys:
        raise HeartbeatKeyError(f"{source}: holds no key (it is empty, or only blank and comment lines); {fix}")
    if len(keys) > MAX_KEYS:
        raise HeartbeatKeyError(f"{source} line {keys[MAX_KEYS][0]}: a third key; a key file holds the signing key "
                                f"and at most one more accepted key (during a rotation): remove the extra key lines")
    return _keyring(source, [k for _, k in keys])


def _keyring(source: str, secrets_: list[bytes]) -> Keyring:
    keys = [Key(s) for s in secrets_]
    try:
        return Keyring.of(keys[0], *keys[1:])
    except HeartbeatKeyError as e:
        raise HeartbeatKeyError(f"{source}: {e}") from None


def keyring_from_secret(data: Mapping[str, str | bytes], key_name: str, source: str) -> Keyring:
    """The keyring a Kubernetes Secret holds: data[key_name] signs, data[key_name + "-previous"]
    is also accepted when present. A str value is base64 (a Secret's `data` as the API returns
    it); a bytes value is already decoded. `source` names the Secret in errors."""
    previous = key_name + PREVIOUS_SUFFIX
    fix = (f"put a key made by `vipfarm keygen` under data.{key_name} (and, during a rotation only, "
           f"a second one under data.{previous})")
    if key_name not in data:
        present = ", ".join(sorted(data)) or "no keys"
        raise HeartbeatKeyError(f"{source}: has no data.{key_name} (it has {present}); {fix}")
    found = [_secret_value(data[name], f"{source} data.{name}", fix)
             for name in (key_name, previous) if name in data]
    return _keyring(source, found)


def _secret_value(raw: str | bytes, where: str, fix: str) -> bytes:
    if isinstance(raw, str):
        try:
            raw = base64.b64decode(raw.encode("ascii"), validate=True)
        except ValueError:            # binascii.Error, and UnicodeEncodeError of a non-ASCII str
            raise HeartbeatKeyError(f"{where}: is not valid base64 (a Secret's data values are base64; "
                                    f"stringData takes plain text); {fix}") from None
    elif not isinstance(raw, (bytes, bytearray)):
        raise HeartbeatKeyError(f"{where}: is a {type(raw).__name__}, not base64 text or bytes; {fix}")
    try:
        text = bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        raise HeartbeatKeyError(f"{where}: is not UTF-8 text; a heartbeat key is a line of text; {fix}") from None
    keys = _keys_in(text, where, fix)
    if not keys:
        raise HeartbeatKeyError(f"{where}: holds no key (it is empty, or only blank and comment lines); {fix}")
    if len(keys) > 1:
        raise HeartbeatKeyError(f"{where} line {keys[1][0]}: a second key; each Secret value holds one key "
                                f"(the key accepted during a rotation goes under its own -previous entry)")
    return keys[0][1]


def generate_key_text() -> str:
    """A new key file: a comment line saying what it is, then 48 random bytes in base64url."""
    key = base64.urlsafe_b64encode(secrets.token_bytes(GENERATED_KEY_BYTES)).decode("ascii")
    return KEY_FILE_HEADER + key + "\n"
