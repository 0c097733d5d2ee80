"""vipfarm.spec: the standalone example parses to the right model; every bad input is
reported with its field path, the offending value and the reason, all at once."""
from __future__ import annotations

import copy
import re
import hashlib
import ipaddress

import pytest
import yaml

from vipfarm.spec import (Farm, FarmSpecError, Heartbeat, NodeSpec, PortRange, Rule, default_seed,
                          default_virtual_mac, interface_name_problem, load_farm_file, node_name_problem,
                          parse_farm, parse_ports)

STANDALONE_EXAMPLE = """\
apiVersion: vipfarm.io/v1alpha1
kind: Farm
metadata:
  name: web
spec:
  virtualIPs: ["203.0.113.10", "2001:db8::10"]
  interface: eth0
  buckets: 1024
  vmacMode: unicast-flood        # or multicast
  xdpMode: auto                  # or native, generic
  rules:
    - protocol: TCP
      ports: "80"                # or a range such as "8000-8100"
      affinity: ClientIPPort     # or ClientIP
  nodes:                         # standalone mode only
    - {name: n1, address: 198.51.100.1, weight: 1}
    - {name: n2, address: 198.51.100.2, weight: 2}
"""


def example() -> dict:
    return yaml.safe_load(STANDALONE_EXAMPLE)


def with_spec(**changes) -> dict:
    doc = example()
    for key, value in changes.items():
        doc["spec"][key] = value
    return doc


def with_rule(**changes) -> dict:
    doc = example()
    doc["spec"]["rules"][0].update(changes)
    return doc


def problems_of(doc, **kw) -> FarmSpecError:
    with pytest.raises(FarmSpecError) as info:
        parse_farm(doc, **kw)
    return info.value


# -- the accepted example ---------------------------------------------------------------------

def test_standalone_example_parses_to_the_expected_model():
    farm = parse_farm(example(), require_nodes=True)
    assert isinstance(farm, Farm)
    assert farm.name == "web"
    assert farm.virtual_ips == (ipaddress.IPv4Address("203.0.113.10"), ipaddress.IPv6Address("2001:db8::10"))
    assert farm.interface == "eth0"
    assert farm.buckets == 1024
    assert farm.vmac_mode == "unicast-flood"
    assert farm.xdp_mode == "auto"
    assert farm.rules == (Rule("TCP", PortRange(80, 80), "ClientIPPort"),)
    assert farm.nodes == (NodeSpec("n1", ipaddress.IPv4Address("198.51.100.1"), 1),
                          NodeSpec("n2", ipaddress.IPv4Address("198.51.100.2"), 2))
    assert farm.node("n2").weight == 2
    assert farm.heartbeat == Heartbeat(7946, 100, 300, "")
    assert farm.checkers == () and farm.recovery is None
    assert dict(farm.node_selector) == {}


def test_default_seed_is_stable_and_derived_from_the_farm_name():
    a = parse_farm(example(), require_nodes=True)
    b = parse_farm(example(), require_nodes=True)
    assert a.seed == b.seed == default_seed("web")
    expected = int.from_bytes(hashlib.sha256(b"vipfarm-seed:web").digest()[:4], "big")
    assert a.seed == expected
    assert 0 <= a.seed < 2**32
    assert default_seed("web") != default_seed("api")


def test_explicit_seed_overrides_the_default():
    assert parse_farm(with_spec(seed=12345)).seed == 12345
    assert parse_farm(with_spec(seed=0)).seed == 0


def test_default_virtual_mac_is_unicast_locally_administered_for_unicast_flood():
    farm = parse_farm(example())
    octets = [int(x, 16) for x in farm.virtual_mac.split(":")]
    assert len(octets) == 6
    assert octets[0] == 0x02
    assert farm.virtual_mac == default_virtual_mac("web", "unicast-flood")
    assert parse_farm(example()).virtual_mac == farm.virtual_mac


def test_default_virtual_mac_is_a_group_address_for_multicast_mode():
    farm = parse_farm(with_spec(vmacMode="multicast"))
    assert farm.vmac_mode == "multicast"
    assert int(farm.virtual_mac[:2], 16) == 0x03
    # same name, same tail: only the first octet differs between the modes
    assert farm.virtual_mac[2:] == default_virtual_mac("web", "unicast-flood")[2:]


def test_port_range_rule_and_clientip_affinity_are_parsed():
    doc = example()
    doc["spec"]["rules"] = [{"protocol": "UDP", "ports": "8000-8100", "affinity": "ClientIP"},
                            {"protocol": "TCP", "ports": 443}]
    farm = parse_farm(doc)
    assert farm.rules == (Rule("UDP", PortRange(8000, 8100), "ClientIP"),
                          Rule("TCP", PortRange(443, 443), "ClientIP"))
    assert farm.rules[0].ports.contains(8000) and farm.rules[0].ports.contains(8100)
    assert not farm.rules[0].ports.contains(8101)
    assert str(farm.rules[0].ports) == "8000-8100" and str(farm.rules[1].ports) == "443"


def test_virtual_mac_is_normalised_to_lower_case():
    assert parse_farm(with_spec(virtualMAC="02:AB:CD:00:00:01")).virtual_mac == "02:ab:cd:00:00:01"


def test_node_lookup_of_an_unlisted_name_explains_the_fix():
    farm = parse_farm(example())
    with pytest.raises(KeyError, match="n9"):
        farm.node("n9")


@pytest.mark.parametrize("text,expected", [("80", (80, 80)), ("8000-8100", (8000, 8100)),
                                           (53, (53, 53)), ("1-65535", (1, 65535))])
def test_parse_ports_accepts_single_ports_and_ranges(text, expected):
    assert parse_ports(text) == PortRange(*expected)


# -- rejected inputs ---------------------------------------------------------------------------

def _node(i, **kw):
    base = {"name": f"n{i}", "address": f"198.51.100.{i}", "weight": 1}
    base.update(kw)
    return base


BAD = [
    # id, document, kwargs, strings the message must contain (path, value, reason)
    ("vip-not-an-address", with_spec(virtualIPs=["203.0.113.300"]), {},
     ["spec.virtualIPs[0]", "203.0.113.300", "not an IPv4 or IPv6 address"]),
    ("vip-listed-twice", with_spec(virtualIPs=["203.0.113.10", "2001:db8::10", "203.0.113.10"]), {},
     ["spec.virtualIPs[2]", "203.0.113.10", "listed twice"]),
    ("vip-multicast", with_spec(virtualIPs=["239.1.2.3"]), {},
     ["spec.virtualIPs[0]", "239.1.2.3", "unicast"]),
    ("vip-loopback-v6", with_spec(virtualIPs=["::1"]), {},
     ["spec.virtualIPs[0]", "::1", "unicast"]),
    ("vips-missing", (lambda d: (d["spec"].pop("virtualIPs"), d)[1])(example()), {},
     ["spec.virtualIPs", "None", "at least one virtual IP"]),
    ("vips-empty", with_spec(virtualIPs=[]), {},
     ["spec.virtualIPs", "[]", "at least one virtual IP"]),
    ("buckets-not-power-of-two", with_spec(buckets=1000), {},
     ["spec.buckets", "1000", "power of two", "512", "1024"]),
    ("buckets-too-large", with_spec(buckets=131072), {},
     ["spec.buckets", "131072", "65536"]),
    ("buckets-zero", with_spec(buckets=0), {},
     ["spec.buckets", "0", "between 1 and 65536"]),
    ("buckets-not-integer", with_spec(buckets="1024"), {},
     ["spec.buckets", "'1024'", "integer"]),
    ("vmac-mode-unknown", with_spec(vmacMode="broadcast"), {},
     ["spec.vmacMode", "broadcast", "unicast-flood", "multicast"]),
    ("xdp-mode-unknown", with_spec(xdpMode="offload"), {},
     ["spec.xdpMode", "offload", "native", "generic"]),
    ("interface-bad-name", with_spec(interface="a-very-long-interface-name"), {},
     ["spec.interface", "a-very-long-interface-name", "1-15 characters"]),
    ("protocol-unknown", with_rule(protocol="SCTP"), {},
     ["spec.rules[0].protocol", "SCTP", "TCP or UDP"]),
    ("ports-reversed", with_rule(ports="90-80"), {},
     ["spec.rules[0].ports", "90-80", "above its end"]),
    ("ports-zero", with_rule(ports=0), {},
     ["spec.rules[0].ports", "0", "between 1 and 65535"]),
    ("ports-too-high", with_rule(ports="70000"), {},
     ["spec.rules[0].ports", "70000", "between 1 and 65535"]),
    ("ports-a-name", with_rule(ports="http"), {},
     ["spec.rules[0].ports", "http", "range such as"]),
    ("affinity-unknown", with_rule(affinity="SourceIP"), {},
     ["spec.rules[0].affinity", "SourceIP", "ClientIP"]),
    ("rule-unknown-field", with_rule(timeout=30), {},
     ["spec.rules[0].timeout", "30", "unknown field"]),
    ("too-many-rules", with_spec(rules=[{"protocol": "TCP", "ports": str(80 + i)} for i in range(9)]), {},
     ["spec.rules", "9 rules", "at most 8"]),
    ("node-name-twice", with_spec(nodes=[_node(1), _node(2, name="n1")]), {},
     ["spec.nodes[1].name", "n1", "listed twice"]),
    ("node-address-bad", with_spec(nodes=[_node(1), _node(2, address="198.51.100")]), {},
     ["spec.nodes[1].address", "198.51.100", "IP address"]),
    ("node-address-shared", with_spec(nodes=[_node(1), _node(2, address="198.51.100.1")]), {},
     ["spec.nodes[1].address", "198.51.100.1", "share this address"]),
    ("node-weight-negative", with_spec(nodes=[_node(1, weight=-1)]), {},
     ["spec.nodes[0].weight", "-1", "between 0 and 1000"]),
    ("node-address-is-a-vip", with_spec(nodes=[_node(1, address="203.0.113.10")]), {},
     ["spec.nodes[0].address", "203.0.113.10", "cannot also be a virtual IP"]),
    ("spec-unknown-field", with_spec(replicas=3), {},
     ["spec.replicas", "3", "unknown field"]),
    ("api-version-wrong", (lambda d: (d.update(apiVersion="vipfarm.io/v1"), d)[1])(example()), {},
     ["apiVersion", "vipfarm.io/v1", "vipfarm.io/v1alpha1"]),
    ("kind-wrong", (lambda d: (d.update(kind="Service"), d)[1])(example()), {},
     ["kind", "Service", "must be Farm"]),
    ("name-not-dns-label", (lambda d: (d["metadata"].update(name="Web_1"), d)[1])(example()), {},
     ["metadata.name", "Web_1", "DNS label"]),
    ("heartbeat-timeout-below-3x-interval", with_spec(heartbeat={"intervalMs": 200, "timeoutMs": 500}), {},
     ["spec.heartbeat.timeoutMs", "500", "3 x intervalMs", "600"]),
    ("standalone-without-nodes", (lambda d: (d["spec"].pop("nodes"), d)[1])(example()), {"require_nodes": True},
     ["spec.nodes", "[]", "standalone mode"]),
    ("multicast-mode-with-unicast-mac", with_spec(vmacMode="multicast", virtualMAC="02:00:5e:10:00:01"), {},
     ["spec.virtualMAC", "02:00:5e:10:00:01", "group MAC"]),
    ("unicast-mode-with-group-mac", with_spec(virtualMAC="03:00:5e:10:00:01"), {},
     ["spec.virtualMAC", "03:00:5e:10:00:01", "unicast MAC"]),
    ("virtual-mac-malformed", with_spec(virtualMAC="02:00:5e:10:00"), {},
     ["spec.virtualMAC", "02:00:5e:10:00", "MAC such as"]),
    ("seed-out-of-range", with_spec(seed=2**32), {},
     ["spec.seed", str(2**32), "between 0 and"]),
    # node names go into a file path and a compiler macro: DNS-1123 subdomains only
    ("node-name-nul", with_spec(nodes=[_node(1, name="n\x00")]), {},
     ["spec.nodes[0].name", "'n\\x00'", "DNS-1123 subdomain"]),
    ("node-name-non-ascii", with_spec(nodes=[_node(1, name="ü")]), {},
     ["spec.nodes[0].name", "ü", "DNS-1123 subdomain"]),
    ("node-name-an-ipv6-address", with_spec(nodes=[_node(1, name="ff02::1")]), {},
     ["spec.nodes[0].name", "ff02::1", "':'", "DNS-1123 subdomain"]),
    ("node-name-path", with_spec(nodes=[_node(1, name="../n1")]), {},
     ["spec.nodes[0].name", "../n1", "'/'"]),
    ("node-name-dot-dot", with_spec(nodes=[_node(1, name="n..1")]), {},
     ["spec.nodes[0].name", "n..1", "empty part"]),
    ("node-name-upper-case", with_spec(nodes=[_node(1, name="Node-1")]), {},
     ["spec.nodes[0].name", "Node-1", "lower case, 'node-1'"]),
    ("node-name-label-too-long", with_spec(nodes=[_node(1, name="a" * 64 + ".example.com")]), {},
     ["spec.nodes[0].name", "a" * 64, "longer than 63"]),
    ("node-name-too-long", with_spec(nodes=[_node(1, name=".".join(["a" * 63] * 3) + "." + "b" * 62)]), {},
     ["spec.nodes[0].name", "a" * 63, "is 254 characters long"]),
    # the kernel's rules for interface names (dev_valid_name)
    ("interface-nul", with_spec(interface="eth\x000"), {},
     ["spec.interface", "'eth\\x000'", "NUL"]),
    ("interface-dot-dot", with_spec(interface=".."), {},
     ["spec.interface", "'..'", "not '.' or '..'"]),
    ("interface-16-bytes-in-utf8", with_spec(interface="ü" * 8), {},
     ["spec.interface", "ü" * 8, "is 16 bytes in UTF-8"]),
    ("interface-vertical-tab", with_spec(interface="eth\x0b0"), {},
     ["spec.interface", "'eth\\x0b0'", "whitespace"]),
    ("interface-nbsp", with_spec(interface="eth\xa00"), {},
     ["spec.interface", "'eth\\xa00'", "whitespace"]),
    ("interface-double-quote", with_spec(interface='eth"0'), {},
     ["spec.interface", "'eth\"0'", "a double quote or a backslash"]),
    ("interface-backslash", with_spec(interface="eth\\n"), {},
     ["spec.interface", "'eth\\\\n'", "a double quote or a backslash"]),
    ("interface-not-text", with_spec(interface=7), {},
     ["spec.interface", "7", "1-15 characters"]),
    # member addresses must be unicast addresses a node can own
    ("node-address-unspecified-v4", with_spec(nodes=[_node(1, address="0.0.0.0")]), {},
     ["spec.nodes[0].address", "0.0.0.0", "the unspecified address"]),
    ("node-address-unspecified-v6", with_spec(nodes=[_node(1, address="::")]), {},
     ["spec.nodes[0].address", "'::'", "the unspecified address"]),
    ("node-address-broadcast", with_spec(nodes=[_node(1, address="255.255.255.255")]), {},
     ["spec.nodes[0].address", "255.255.255.255", "broadcast"]),
    ("node-address-multicast", with_spec(nodes=[_node(1, address="ff02::1")]), {},
     ["spec.nodes[0].address", "ff02::1", "a multicast address"]),
    ("node-address-loopback", with_spec(nodes=[_node(1, address="127.0.0.1")]), {},
     ["spec.nodes[0].address", "127.0.0.1", "a loopback address"]),
    ("node-address-ipv4-mapped", with_spec(nodes=[_node(1, address="::ffff:198.51.100.1")]), {},
     ["spec.nodes[0].address", "::ffff:198.51.100.1", "IPv4-mapped"]),
    ("node-address-zoned", with_spec(nodes=[_node(1, address="fe80::1%eth0")]), {},
     ["spec.nodes[0].address", "fe80::1%eth0", "zoned"]),
    ("node-address-is-a-vip-spelled-differently", with_spec(nodes=[_node(1, address="2001:DB8:0::10")]), {},
     ["spec.nodes[0].address", "2001:db8::10", "cannot also be a virtual IP"]),
    ("vip-broadcast", with_spec(virtualIPs=["255.255.255.255"]), {},
     ["spec.virtualIPs[0]", "255.255.255.255", "the IPv4 broadcast address"]),
    ("vip-unspecified-v6", with_spec(virtualIPs=["::"]), {},
     ["spec.virtualIPs[0]", "'::'", "the unspecified address"]),
    # a regex anchored with $ lets a trailing newline through; these must not
    ("name-with-trailing-newline", (lambda d: (d["metadata"].update(name="web\n"), d)[1])(example()), {},
     ["metadata.name", "'web\\n'", "DNS label"]),
    # a typo in a field name must not silently fall back to the default
    ("node-unknown-field", with_spec(nodes=[_node(1, wieght=2)]), {},
     ["spec.nodes[0].wieght", "2", "unknown field; a node has name, address, weight and drain"]),
    ("heartbeat-unknown-field", with_spec(heartbeat={"intervalMS": 500}), {},
     ["spec.heartbeat.intervalMS", "500", "unknown field; heartbeat has port, intervalMs, timeoutMs, keyFile and witness"]),
    # an empty value of the wrong type is not "absent" (the API server refuses these too)
    ("node-selector-empty-list", with_spec(nodeSelector=[]), {},
     ["spec.nodeSelector", "[]", "must map label names"]),
    ("node-selector-empty-string", with_spec(nodeSelector=""), {},
     ["spec.nodeSelector", "''", "must map label names"]),
    ("heartbeat-zero", with_spec(heartbeat=0), {},
     ["spec.heartbeat", "0", "must be a mapping"]),
    ("heartbeat-false", with_spec(heartbeat=False), {},
     ["spec.heartbeat", "False", "must be a mapping"]),
    ("virtual-mac-with-trailing-newline", with_spec(virtualMAC="02:00:5e:10:00:01\n"), {},
     ["spec.virtualMAC", "'02:00:5e:10:00:01\\n'", "MAC such as"]),
]


@pytest.mark.parametrize("doc,kwargs,needles", [pytest.param(d, k, n, id=i) for i, d, k, n in BAD])
def test_bad_input_is_rejected_naming_path_value_and_reason(doc, kwargs, needles):
    err = problems_of(copy.deepcopy(doc), **kwargs)
    message = str(err)
    for needle in needles:
        assert needle in message, f"{needle!r} missing from:\n{message}"
    # the path and the value sit in one problem line, not scattered across several
    path, value = needles[0], needles[1]
    assert any(p.startswith(path) and value in p for p in err.problems), err.problems


def test_non_mapping_document_is_rejected():
    err = problems_of(["not", "a", "farm"])
    assert "list" in str(err) and "mapping" in str(err)


def test_missing_spec_is_rejected_with_the_farm_name():
    doc = example()
    del doc["spec"]
    err = problems_of(doc)
    assert err.farm == "web"
    assert "spec=None" in str(err)


def test_several_problems_are_all_reported_in_one_error():
    doc = example()
    doc["spec"]["buckets"] = 1000
    doc["spec"]["xdpMode"] = "turbo"
    doc["spec"]["virtualIPs"] = ["203.0.113.10", "nope"]
    doc["spec"]["rules"][0]["ports"] = "90-80"
    doc["spec"]["nodes"][1]["name"] = "n1"
    err = problems_of(doc)
    assert len(err.problems) >= 5
    text = str(err)
    for needle in ("spec.buckets", "spec.xdpMode", "spec.virtualIPs[1]", "spec.rules[0].ports",
                   "spec.nodes[1].name"):
        assert needle in text
    assert f"({len(err.problems)} problem(s))" in text
    assert err.farm == "web"


def test_without_require_nodes_a_farm_needs_no_node_list():
    doc = example()
    del doc["spec"]["nodes"]
    assert parse_farm(doc).nodes == ()


# -- files --------------------------------------------------------------------------------------

def test_load_farm_file_reads_the_standalone_example(tmp_path):
    path = tmp_path / "farm.yaml"
    path.write_text(STANDALONE_EXAMPLE)
    assert load_farm_file(str(path)) == parse_farm(example(), require_nodes=True)


def test_load_farm_file_on_a_missing_path_names_the_file(tmp_path):
    path = str(tmp_path / "missing.yaml")
    with pytest.raises(FarmSpecError) as info:
        load_farm_file(path)
    assert path in str(info.value)
    assert "cannot read" in str(info.value)


def test_load_farm_file_on_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("apiVersion: vipfarm.io/v1alpha1\nspec: {virtualIPs: [\n")
    with pytest.raises(FarmSpecError) as info:
        load_farm_file(str(path))
    assert str(path) in str(info.value)
    assert "not valid YAML" in str(info.value)


def test_load_farm_file_requires_nodes_by_default(tmp_path):
    path = tmp_path / "farm.yaml"
    doc = example()
    del doc["spec"]["nodes"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(FarmSpecError, match="spec.nodes"):
        load_farm_file(str(path))


@pytest.mark.parametrize("content", ["", "# only a comment\n", "- a\n- list\n"])
def test_load_farm_file_whose_document_is_not_a_mapping_names_the_file(tmp_path, content):
    # load_farm_file promises "errors name the file". An empty file (or a YAML list) loads as
    # a non-mapping and parse_farm reports Farm '?' with no trace of which file was wrong,
    # so with several --farm-file arguments the operator cannot tell which one to fix.
    path = tmp_path / "empty-farm.yaml"
    path.write_text(content)
    with pytest.raises(FarmSpecError) as info:
        load_farm_file(str(path))
    assert str(path) in str(info.value), (
        f"BUG: load_farm_file({str(path)!r}) on a non-mapping document raised an error that "
        f"does not name the file: {str(info.value)!r}")


@pytest.mark.parametrize("text", [" 80", "80 - 90", "8000 -8100"])
def test_parse_ports_rejects_spaces_like_the_crd_pattern(text):
    with pytest.raises(ValueError):
        parse_ports(text)


@pytest.mark.parametrize("vip", ["::ffff:203.0.113.10", "fe80::1%eth0"])
def test_zoned_and_ipv4_mapped_vips_are_rejected_like_the_crd(vip):
    doc = {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
           "spec": {"virtualIPs": [vip]}}
    with pytest.raises(FarmSpecError) as e:
        parse_farm(doc)
    assert "spec.virtualIPs[0]" in str(e.value) and vip in str(e.value)


# -- node and interface names ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["n1", "node-1", "node-1.example.com", "a", "0", "1.2", "a" * 63,
                                  ".".join(["a" * 63] * 3) + "." + "b" * 61])
def test_node_names_that_are_dns_1123_subdomains_are_accepted(name):
    assert node_name_problem(name) is None
    farm = parse_farm(with_spec(nodes=[_node(1, name=name)]))
    assert farm.nodes[0].name == name


@pytest.mark.parametrize("name", ["", None, 7, "\x00", "n\x001", "ü", "ff02::1", "0.0.0.0.", ".n1", "n1.",
                                  "-n1", "n1-", "n_1", "N1", "n 1", "n1\n", "a/b", "..", ".", "n1..n2",
                                  "a" * 64, "x" * 254])
def test_node_name_problem_refuses_what_is_not_a_subdomain_and_gives_the_rule(name):
    problem = node_name_problem(name)
    assert problem is not None and "DNS-1123 subdomain" in problem and "e.g. n1" in problem


@pytest.mark.parametrize("name", ["0.0.0.0", "198.51.100.1", "255.255.255.255", "203.0.113.7"])
def test_a_node_name_that_is_an_ip_address_is_refused_with_where_the_address_goes(name):
    problem = node_name_problem(name)
    assert problem is not None and "IP address" in problem and "address" in problem
    with pytest.raises(FarmSpecError, match=re.escape(f"spec.nodes[0].name={name!r}")):
        parse_farm(with_spec(nodes=[{"name": name, "address": "198.51.100.1"}]))


@pytest.mark.parametrize("name", ["eth0", "bond0.100", "br-0123456789ab", "x" * 15, "veth@1", "ü" * 7, "-"])
def test_interface_names_the_kernel_accepts_are_accepted(name):
    assert interface_name_problem(name) is None
    assert parse_farm(with_spec(interface=name)).interface == name


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\x00", "\x00", "x" * 16,
                                  "ü" * 8, "eth\xa0", "eth\u00e0", "eth\u2003", "\ud800", 0, ["eth0"]])
def test_interface_names_the_kernel_refuses_are_refused(name):
    assert interface_name_problem(name) is not None
    with pytest.raises(FarmSpecError, match="spec.interface"):
        parse_farm(with_spec(interface=name))


def test_member_addresses_that_are_unicast_are_accepted_including_link_local():
    farm = parse_farm(with_spec(nodes=[_node(1, address="2001:db8::1"), _node(2, address="169.254.0.2"),
                                       _node(3, address="fe80::3"), _node(4, address="203.0.113.255")]))
    assert [str(n.address) for n in farm.nodes] == ["2001:db8::1", "169.254.0.2", "fe80::3", "203.0.113.255"]


@pytest.mark.parametrize("field,default", [("interface", "eth0"), ("rules", ()), ("nodes", ()), ("buckets", 1024),
                                           ("vmacMode", "unicast-flood"), ("heartbeat", Heartbeat())])
def test_a_null_field_counts_as_absent_as_the_api_server_counts_it(field, default):
    farm = parse_farm(with_spec(**{field: None}))
    attr = {"vmacMode": "vmac_mode"}.get(field, field)
    assert getattr(farm, attr) == default


def test_a_null_affinity_counts_as_absent():
    assert parse_farm(with_rule(affinity=None)).rules[0].affinity == "ClientIP"


def test_a_null_node_list_in_standalone_mode_asks_for_the_member_list():
    err = problems_of(with_spec(nodes=None), require_nodes=True)
    assert any(p.startswith("spec.nodes=") and "standalone mode needs the member list" in p for p in err.problems)
