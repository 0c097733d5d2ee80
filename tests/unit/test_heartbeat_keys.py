"""Heartbeat keys: the key file and Secret formats, their errors (which name the source and the
fix and never hold key material), key rotation, and `vipfarm keygen`."""
from __future__ import annotations

import base64
import os
import stat

import pytest

from nodeagent import cli
from vipfarm.heartbeat_keys import (MIN_KEY_BYTES, HeartbeatKeyError, Key, Keyring, generate_key_text,
                                    keyring_from_secret, parse_key_text)
from vipfarm.heartbeat_wire import BaseRequest, WireError, decode, encode

K1 = "first-key-" + "1" * 30
K2 = "second-key-" + "2" * 30
K3 = "third-key-" + "3" * 30
SHORT = "s3cr3t-but-too-short"
SOURCE = "/etc/vipfarm/heartbeat.key"


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def error_of(fn, *args) -> str:
    with pytest.raises(HeartbeatKeyError) as e:
        fn(*args)
    return str(e.value)


# ---- key file -------------------------------------------------------------------------------

def test_a_key_file_gives_its_first_key_to_sign_with():
    ring = parse_key_text(f"# the farm's key\n\n  {K1}  \r\n", SOURCE)
    assert ring.signing == Key(K1.encode())
    assert ring.accepted == (Key(K1.encode()),)


def test_a_second_key_line_is_accepted_but_not_signed_with():
    ring = parse_key_text(f"{K1}\n# next key, during the rotation\n{K2}\n", SOURCE)
    assert ring.signing == Key(K1.encode())
    assert ring.accepted == (Key(K1.encode()), Key(K2.encode()))


def test_a_short_key_is_refused_naming_the_file_line_length_and_fix_but_not_the_key():
    msg = error_of(parse_key_text, f"# comment\n{K1}\n{SHORT}\n", SOURCE)
    assert f"{SOURCE} line 3" in msg
    assert f"the key is {len(SHORT)} bytes" in msg and f"at least {MIN_KEY_BYTES}" in msg
    assert f"vipfarm keygen --out {SOURCE}" in msg
    assert SHORT not in msg and K1 not in msg


def test_three_keys_are_refused_naming_the_third_line_but_no_key():
    msg = error_of(parse_key_text, f"{K1}\n{K2}\n\n{K3}\n", SOURCE)
    assert f"{SOURCE} line 4: a third key" in msg
    assert "at most one more accepted key" in msg
    assert not any(k in msg for k in (K1, K2, K3))


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n   \n"])
def test_a_file_without_a_key_is_refused_with_the_keygen_command(text):
    msg = error_of(parse_key_text, text, SOURCE)
    assert msg.startswith(f"{SOURCE}: holds no key")
    assert f"vipfarm keygen --out {SOURCE}" in msg


def test_the_same_key_twice_in_a_file_is_one_accepted_key():
    assert parse_key_text(f"{K1}\n{K1}\n", SOURCE).accepted == (Key(K1.encode()),)


def test_key_material_never_shows_in_a_repr():
    ring = parse_key_text(f"{K1}\n{K2}\n", SOURCE)
    for shown in (repr(ring), repr(ring.signing), ring.describe()):
        assert K1 not in shown and K2 not in shown
    assert ring.describe() == f"signing_key={ring.signing.key_id.hex()} accepted_keys={','.join(ring.key_ids)}"


def test_a_key_made_directly_must_be_long_enough():
    with pytest.raises(HeartbeatKeyError, match="at least 32 bytes, got 5"):
        Key(b"short")


def test_a_keyring_must_accept_its_signing_key():
    with pytest.raises(ValueError, match="must be among the accepted"):
        Keyring(Key(K1.encode()), (Key(K2.encode()),))


# ---- rotation -------------------------------------------------------------------------------

def agent_ring(step: int) -> Keyring:
    """The keyring of an agent that has loaded step `step` of the rotation from K1 to K2 in the
    module docstring (0: before it starts)."""
    return parse_key_text({0: f"{K1}\n", 1: f"{K1}\n{K2}\n", 2: f"{K2}\n{K1}\n", 3: f"{K2}\n"}[step], SOURCE)


def hears(receiver: Keyring, sender: Keyring) -> bool:
    try:
        decode(encode(BaseRequest("web", 1, 1, 1, 0, b"d" * 8), sender.signing), receiver)
        return True
    except WireError as e:
        assert e.reason == "unknown_key"
        return False


@pytest.mark.parametrize("step", [0, 1, 2])
def test_every_agent_hears_every_other_while_the_rotation_moves_one_step(step):
    """During each change, some agents have loaded it and some not: all must hear all."""
    for a in (step, step + 1):
        for b in (step, step + 1):
            assert hears(agent_ring(a), agent_ring(b)), (a, b)


def test_swapping_the_key_in_one_step_loses_heartbeats_which_is_why_the_rotation_has_three():
    swapped = parse_key_text(f"{K2}\n{K1}\n", SOURCE)
    assert not hears(agent_ring(0), swapped)


# ---- Secret ---------------------------------------------------------------------------------

SECRET = "Secret vipfarm-system/vipfarm-heartbeat"


def test_a_secret_signs_with_its_key_and_also_accepts_the_previous_one():
    ring = keyring_from_secret({"hmac-key": b64(K2), "hmac-key-previous": b64(K1)}, "hmac-key", SECRET)
    assert ring.signing == Key(K2.encode())
    assert ring.accepted == (Key(K2.encode()), Key(K1.encode()))


def test_a_secret_value_may_be_already_decoded_bytes():
    assert keyring_from_secret({"hmac-key": K1.encode()}, "hmac-key", SECRET).accepted == (Key(K1.encode()),)


def test_a_key_file_from_keygen_can_be_stored_in_a_secret_as_is():
    text = generate_key_text()
    assert keyring_from_secret({"k": b64(text)}, "k", SECRET) == parse_key_text(text, SOURCE)


def test_a_secret_without_the_key_is_refused_listing_the_keys_it_has():
    msg = error_of(keyring_from_secret, {"other": b64(K1)}, "hmac-key", SECRET)
    assert msg.startswith(f"{SECRET}: has no data.hmac-key (it has other)")
    assert "vipfarm keygen" in msg and K1 not in msg


def test_a_short_key_in_a_secret_is_refused_naming_the_entry_but_not_the_key():
    msg = error_of(keyring_from_secret, {"hmac-key": b64(K1), "hmac-key-previous": b64(SHORT)}, "hmac-key", SECRET)
    assert f"{SECRET} data.hmac-key-previous line 1: the key is {len(SHORT)} bytes" in msg
    assert SHORT not in msg and K1 not in msg


@pytest.mark.parametrize("value, why", [("not base64!", "is not valid base64"),
                                        (base64.b64encode(b"\xff" * 40).decode(), "is not UTF-8 text"),
                                        (b64(f"{K1}\n{K2}\n"), "line 2: a second key")])
def test_a_bad_secret_value_is_refused_with_what_is_wrong(value, why):
    msg = error_of(keyring_from_secret, {"hmac-key": value}, "hmac-key", SECRET)
    assert f"{SECRET} data.hmac-key" in msg and why in msg
    assert K1 not in msg and K2 not in msg


# ---- generation and `vipfarm keygen` --------------------------------------------------------

def test_a_generated_key_file_parses_to_one_long_key_and_says_what_it_is():
    text = generate_key_text()
    first, key, rest = text.split("\n")
    assert first.startswith("# vipfarm heartbeat key") and rest == ""
    assert len(base64.urlsafe_b64decode(key)) == 48
    assert parse_key_text(text, SOURCE).signing.secret == key.encode()
    assert len(key.encode()) >= MIN_KEY_BYTES
    assert generate_key_text() != text


def test_keygen_prints_a_new_key(capsys):
    assert cli.main(["keygen"]) == 0
    assert len(parse_key_text(capsys.readouterr().out, "stdout").signing.secret) >= MIN_KEY_BYTES


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_keygen_writes_the_key_file_with_mode_0600_whatever_the_umask(tmp_path, capsys, umask):
    out = tmp_path / "heartbeat.key"
    old = os.umask(umask)
    try:
        assert cli.main(["keygen", "--out", str(out)]) == 0
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    ring = parse_key_text(out.read_text(), str(out))
    assert f"key_id={ring.signing.key_id.hex()}" in capsys.readouterr().err


def test_keygen_refuses_to_overwrite_a_key_file_without_force(tmp_path, capsys):
    out = tmp_path / "heartbeat.key"
    out.write_text("the key in use\n")
    assert cli.main(["keygen", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{out} exists" in err and "--force" in err
    assert out.read_text() == "the key in use\n"


def test_keygen_force_replaces_the_file_with_a_new_key_and_mode_0600(tmp_path):
    out = tmp_path / "heartbeat.key"
    out.write_text("old\n")
    out.chmod(0o644)
    assert cli.main(["keygen", "--out", str(out), "--force"]) == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    parse_key_text(out.read_text(), str(out))
    assert os.listdir(tmp_path) == ["heartbeat.key"]


def test_keygen_into_a_missing_directory_says_it_cannot_write(tmp_path, capsys):
    out = tmp_path / "missing" / "heartbeat.key"
    assert cli.main(["keygen", "--out", str(out)]) == 1
    assert f"cannot write {out}: No such file or directory" in capsys.readouterr().err
