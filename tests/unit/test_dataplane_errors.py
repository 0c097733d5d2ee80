"""Clear errors from the dataplane shell, without touching the host."""
from __future__ import annotations

import pytest

from nodeagent import bpf_program
from nodeagent.bpf_program import DataplaneError
from nodeagent.dataplane import merge_xdp_modes, resolve_xdp_mode
from vipfarm.spec import parse_farm


def test_missing_kernel_headers_say_what_to_install(monkeypatch):
    monkeypatch.setattr(bpf_program.platform, "release", lambda: "9.9.9-nothere")
    with pytest.raises(DataplaneError) as e:
        bpf_program.check_kernel_headers()
    msg = str(e.value)
    assert "/lib/modules/9.9.9-nothere/build" in msg
    assert "linux-headers-amd64" in msg and "scripts/install.sh" in msg


def test_auto_mode_never_picks_native_on_a_veth_and_says_why():
    mode, why = resolve_xdp_mode("auto", "veth")
    assert mode == "generic" and "veth" in why and "XDP_TX" in why
    assert resolve_xdp_mode("auto", "")[0] == "native"
    assert resolve_xdp_mode("native", "veth")[0] == "native"     # explicit wins
    assert resolve_xdp_mode("generic", "")[0] == "generic"


def _farm(name, mode):
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
                       "spec": {"virtualIPs": [f"203.0.113.{len(name)}"], "xdpMode": mode}})


def test_farms_sharing_an_interface_must_agree_on_the_xdp_mode():
    assert merge_xdp_modes([_farm("a", "auto"), _farm("bb", "native")]) == "native"
    with pytest.raises(DataplaneError) as e:
        merge_xdp_modes([_farm("a", "generic"), _farm("bb", "native")])
    assert "a=generic" in str(e.value) and "bb=native" in str(e.value)


def test_the_agent_refuses_a_node_name_that_is_not_a_kubernetes_node_name(capsys, monkeypatch):
    from nodeagent.main import main
    for argv, env in ((["--node", "n1/../../etc", "--farm-file", "x.yaml"], None), (["--cluster"], "Node_1")):
        if env:
            monkeypatch.setenv("NODE_NAME", env)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "node name" in err and "Nothing was changed on this node." in err


def test_standalone_farm_files_on_different_interfaces_may_not_share_a_vip(tmp_path):
    import pytest

    from nodeagent.standalone import load_farms
    from vipfarm.spec import FarmSpecError
    paths = []
    for name, iface, vip in (("a", "eth0", "2001:db8::10"), ("b", "eth1", "2001:DB8::10")):
        p = tmp_path / f"{name}.yaml"
        p.write_text(f"apiVersion: vipfarm.io/v1alpha1\nkind: Farm\nmetadata: {{name: {name}}}\nspec:\n"
                     f"  virtualIPs: [\"{vip}\"]\n  interface: {iface}\n"
                     f"  nodes: [{{name: n1, address: 198.51.100.1}}]\n")
        paths.append(str(p))
    with pytest.raises(FarmSpecError, match=r"2001:db8::10 is also claimed by farm 'a'"):
        load_farms(paths, "n1")
