"""Standalone mode's heartbeat key: a multi-node farm without one refuses to start, saying how
to make one; a farm of one needs none; an unreadable or short key file is named with the fix."""
from __future__ import annotations

import pytest

from nodeagent.standalone import farm_keyring
from vipfarm.heartbeat_keys import generate_key_text, parse_key_text
from vipfarm.spec import FarmSpecError, parse_farm


def farm(nodes, key_file=None):
    hb = {"keyFile": key_file} if key_file else {}
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
                       "spec": {"virtualIPs": ["203.0.113.10"], "heartbeat": hb,
                                "nodes": [{"name": n, "address": f"198.51.100.{i + 1}"} for i, n in enumerate(nodes)]}})


def test_a_multi_node_farm_without_a_key_refuses_to_start_and_says_how_to_make_one():
    with pytest.raises(FarmSpecError) as e:
        farm_keyring(farm(["n1", "n2"]))
    text = str(e.value)
    assert "spec.heartbeat.keyFile is not set" in text and "vipfarm keygen --out" in text and "'web'" in text


def test_a_farm_of_one_needs_no_key():
    assert farm_keyring(farm(["n1"])) is None


def test_a_missing_or_short_key_file_is_named_with_the_fix(tmp_path):
    missing = tmp_path / "nokey"
    with pytest.raises(FarmSpecError) as e:
        farm_keyring(farm(["n1", "n2"], str(missing)))
    assert str(missing) in str(e.value) and "vipfarm keygen --out" in str(e.value)
    short = tmp_path / "short"
    short.write_text("tooshort\n")
    with pytest.raises(FarmSpecError) as e:
        farm_keyring(farm(["n1", "n2"], str(short)))
    assert "tooshort" not in str(e.value) and str(short) in str(e.value)


def test_a_generated_key_file_is_read(tmp_path):
    path = tmp_path / "key"
    path.write_text(generate_key_text())
    ring = farm_keyring(farm(["n1", "n2"], str(path)))
    assert ring == parse_key_text(path.read_text(), str(path))
