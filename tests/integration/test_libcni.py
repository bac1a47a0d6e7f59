"""The `ovs` plugin as runtimes see it: driven by libcni for every spec version it can parse
(0.1.0 ... 1.0.0), and executed directly for 1.1.0 (STATUS, GC), which Debian's libcni 1.1.2
cannot parse yet. Everything is real: the Go driver links libcni, the plugin talks to a lab
host's agent, and the checks look at the container netns, OVS and etcd.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from libcni.build import Libcni, write_conflist

from overlay.lab import containers as ctr
from overlay.lab.shell import run
from overlay.lab.topology import Lab, LabHost
from overlay_fixtures import (
    container_addresses,
    container_link,
    host_snapshot,
    ovs_plugin,
)

LIBCNI_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0")
ALL_VERSIONS = (*LIBCNI_VERSIONS, "1.1.0")
SUBNET = ipaddress.ip_network("10.0.0.0/24")
NETWORK = "my-net"


@pytest.fixture(scope="module")
def lab(lab_factory: Callable[..., Lab]) -> Lab:
    return lab_factory(hosts=1)


@pytest.fixture
def libcni(libcni_driver: str, lab: Lab, tmp_path: Path) -> Libcni:
    return Libcni(libcni_driver, [lab.cni_bin], str(tmp_path / "cache"))


def conflist(version: str | None, *plugins: dict[str, Any], name: str = NETWORK) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "plugins": list(plugins)}
    if version is not None:
        out["cniVersion"] = version
    return out


def netconf(host: LabHost, version: str | None, **extra: Any) -> dict[str, Any]:
    """What libcni feeds the plugin of a one-plugin list: the plugin plus name and cniVersion."""
    conf = {**ovs_plugin(host), "name": NETWORK, **extra}
    if version is not None:
        conf["cniVersion"] = version
    return conf


def direct(lab: Lab, command: str, conf: dict[str, Any], container_id: str = "", netns: str = "",
           ifname: str = "eth0", cni_args: str = "") -> ctr.CniOutcome:
    """Execute the plugin as a runtime would. STATUS and GC have no container: libcni 1.2 then
    exports CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME empty."""
    if command in ("STATUS", "GC"):
        ifname = ""
    return ctr.cni_exec(lab.cni_bin, command, container_id=container_id, netns=netns, ifname=ifname,
                        netconf=conf, cni_args=cni_args)


def tag(prefix: str, version: str) -> str:
    return f"{prefix}-{version.replace('.', '')}"


def assert_result_shape(version: str, result: dict[str, Any], netns: str) -> str:
    """The result is in `version`'s shape and names what is in the netns; returns the CIDR."""
    assert result["cniVersion"] == version
    if version in ("0.1.0", "0.2.0"):
        assert set(result) <= {"cniVersion", "ip4", "ip6", "dns"}, result
        address = str(result["ip4"]["ip"])
    else:
        assert "ip4" not in result and "ip6" not in result, result
        interfaces, ips = result["interfaces"], result["ips"]
        assert len(ips) == 1, ips
        entry = ips[0]
        container_if = interfaces[entry["interface"]]
        assert container_if["name"] == "eth0" and container_if["sandbox"] == netns, result
        assert [i for i in interfaces if not i.get("sandbox")], "host-side veth missing: " + str(result)
        if version.startswith("0."):
            assert entry["version"] == "4"
        else:
            assert "version" not in entry  # dropped by spec 1.0.0
        assert container_link(netns)["address"] == container_if["mac"]
        address = str(entry["address"])
    assert ipaddress.ip_interface(address).network == SUBNET
    assert container_addresses(netns) == [address]
    return address


def host_side(result: dict[str, Any]) -> str:
    return str(next(i["name"] for i in result["interfaces"] if not i.get("sandbox")))


def attachment_present(lab: Lab, h: LabHost, container_id: str, result: dict[str, Any],
                       network: str = NETWORK) -> dict[str, bool]:
    """Which of an attachment's pieces exist: host veth, OVS port, etcd endpoint, IP allocation."""
    veth = host_side(result)
    ip = str(result["ips"][0]["address"]).split("/")[0]
    veth_up = run(["ip", "link", "show", "dev", veth], netns=h.netns, check=False).returncode == 0
    ports = run(["ovs-vsctl", f"--db=unix:{h.ovs_dir}/db.sock", "list-ports", "br-int"]).stdout.split()
    keys = host_snapshot(lab, h)["etcd"]
    return {"veth": veth_up, "port": veth in ports,
            "endpoint": f"/overlay/v1/endpoints/{network}/{container_id}/eth0" in keys,
            "ip": f"/overlay/v1/ipam/{network}/{ip}" in keys}


# --- through libcni 1.1.2 -------------------------------------------------------------------


@pytest.mark.parametrize("version", LIBCNI_VERSIONS)
def test_add_check_del_through_libcni(lab: Lab, libcni: Libcni, netns: str, tmp_path: Path,
                                      version: str) -> None:
    h, cid = lab.hosts[0], tag("lc", version)
    conf = write_conflist(tmp_path, conflist(version, ovs_plugin(h)))
    before = host_snapshot(lab, h, netns)

    added = libcni(conf, "add", netns=netns, container_id=cid)
    assert added.returncode == 0, str(added)
    assert_result_shape(version, added.json(), netns)
    assert os.path.exists(libcni.cache_file(NETWORK, cid))

    checked = libcni(conf, "check", netns=netns, container_id=cid)
    if version in ("0.4.0", "1.0.0"):
        assert checked.returncode == 0, str(checked)
    else:  # CHECK arrived with 0.4.0: libcni refuses before it runs the plugin
        assert checked.returncode == 1
        assert "does not support the CHECK command" in checked.error["error"]

    deleted = libcni(conf, "del", netns=netns, container_id=cid)
    assert deleted.returncode == 0, str(deleted)
    assert host_snapshot(lab, h, netns) == before
    assert not os.path.exists(libcni.cache_file(NETWORK, cid))


def test_version_through_libcni(lab: Lab, libcni: Libcni, tmp_path: Path) -> None:
    conf = write_conflist(tmp_path, conflist("1.0.0", ovs_plugin(lab.hosts[0])))
    out = libcni(conf, "version")
    assert out.returncode == 0, str(out)
    assert out.json() == [{"type": "ovs", "supportedVersions": list(ALL_VERSIONS)}]


def test_conflist_without_cni_version_through_libcni(lab: Lab, libcni: Libcni, netns: str,
                                                     tmp_path: Path) -> None:
    """libcni injects `"cniVersion": ""` when the list has none; like libcni, that is 0.1.0."""
    h = lab.hosts[0]
    conf = write_conflist(tmp_path, conflist(None, ovs_plugin(h)))
    before = host_snapshot(lab, h, netns)
    added = libcni(conf, "add", netns=netns, container_id="lc-noversion")
    assert added.returncode == 0, str(added)
    result = added.json()
    assert "ip4" in result and "ips" not in result, result
    assert container_addresses(netns) == [result["ip4"]["ip"]]
    assert libcni(conf, "del", netns=netns, container_id="lc-noversion").returncode == 0
    assert host_snapshot(lab, h, netns) == before


def test_unsupported_version_through_libcni_is_code_1(lab: Lab, libcni: Libcni, netns: str,
                                                      tmp_path: Path) -> None:
    h = lab.hosts[0]
    conf = write_conflist(tmp_path, conflist("9.9.9", ovs_plugin(h)))
    before = host_snapshot(lab, h, netns)
    added = libcni(conf, "add", netns=netns, container_id="lc-999")
    assert added.returncode == 1 and added.error.get("code") == 1, str(added)
    assert host_snapshot(lab, h, netns) == before


# --- executed directly ----------------------------------------------------------------------


def test_missing_cni_version_is_0_1_0(lab: Lab, netns: str) -> None:
    h = lab.hosts[0]
    conf = netconf(h, None)
    before = host_snapshot(lab, h, netns)
    added = direct(lab, "ADD", conf, "d-noversion", netns)
    assert added.returncode == 0, added.stdout
    result = added.json()
    assert result["cniVersion"] == "0.1.0"
    assert_result_shape("0.1.0", result, netns)
    assert direct(lab, "DEL", conf, "d-noversion", netns).returncode == 0
    assert host_snapshot(lab, h, netns) == before


def test_unsupported_version_is_code_1(lab: Lab, netns: str) -> None:
    h = lab.hosts[0]
    before = host_snapshot(lab, h, netns)
    out = direct(lab, "ADD", netconf(h, "9.9.9"), "d-999", netns)
    assert out.returncode != 0 and out.json()["code"] == 1, out.stdout
    assert host_snapshot(lab, h, netns) == before


@pytest.mark.parametrize("version", ["0.2.0", "0.3.1"])
def test_check_below_0_4_0_is_code_1(lab: Lab, netns: str, version: str) -> None:
    h, cid = lab.hosts[0], tag("d-chk", version)
    conf = netconf(h, version)
    added = direct(lab, "ADD", conf, cid, netns)
    assert added.returncode == 0, added.stdout
    try:
        checked = direct(lab, "CHECK", conf, cid, netns)
        assert checked.returncode != 0, checked.stdout
        assert checked.json()["code"] == 1, checked.stdout
    finally:
        assert direct(lab, "DEL", conf, cid, netns).returncode == 0


def test_1_1_0_add_check_del(lab: Lab, netns: str) -> None:
    h, cid = lab.hosts[0], "d-110"
    conf = netconf(h, "1.1.0")
    before = host_snapshot(lab, h, netns)
    added = direct(lab, "ADD", conf, cid, netns)
    assert added.returncode == 0, added.stdout
    result = added.json()
    assert_result_shape("1.1.0", result, netns)
    container_if = result["interfaces"][result["ips"][0]["interface"]]
    assert container_if["mtu"] == 1450  # interface `mtu`: new in 1.1.0, sent only for 1.1.0
    # A runtime sends the final ADD result as prevResult with CHECK and DEL (spec 0.4.0+).
    checked = direct(lab, "CHECK", {**conf, "prevResult": result}, cid, netns)
    assert checked.returncode == 0 and checked.stdout == "", checked.stdout
    deleted = direct(lab, "DEL", {**conf, "prevResult": result}, cid, netns)
    assert deleted.returncode == 0 and deleted.stdout == "", deleted.stdout
    assert host_snapshot(lab, h, netns) == before


def test_status(lab: Lab, tmp_path: Path) -> None:
    h = lab.hosts[0]
    up = direct(lab, "STATUS", netconf(h, "1.1.0"))
    assert up.returncode == 0 and up.stdout == "", up.stdout
    gone = str(tmp_path / "no-agent.sock")
    down = direct(lab, "STATUS", netconf(h, "1.1.0", agentSocket=gone))
    assert down.returncode != 0, down.stdout
    assert down.json()["code"] == 50, down.stdout  # not available: cannot service ADD


def test_status_through_the_driver(lab: Lab, libcni: Libcni, tmp_path: Path) -> None:
    """libcni 1.2's GetStatusNetworkList: STATUS to each plugin of a 1.1.0 list."""
    h = lab.hosts[0]
    up = libcni(write_conflist(tmp_path, conflist("1.1.0", ovs_plugin(h)), "up.conflist"), "status")
    assert up.returncode == 0 and up.stdout == "", str(up)
    gone = ovs_plugin(h, agentSocket=str(tmp_path / "no-agent.sock"))
    down = libcni(write_conflist(tmp_path, conflist("1.1.0", gone), "down.conflist"), "status")
    assert down.returncode == 1 and down.error.get("code") == 50, str(down)


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_removes_only_attachments_missing_from_the_valid_list(
        lab: Lab, netns_factory: Callable[[], str], key: str) -> None:
    h = lab.hosts[0]
    stale_ns, kept_ns = netns_factory(), netns_factory()
    suffix = "v" if key.endswith("valid-attachments") else "l"
    stale_id, kept_id = f"gc-stale-{suffix}", f"gc-kept-{suffix}"
    conf = netconf(h, "1.1.0")
    before = host_snapshot(lab, h)
    stale = direct(lab, "ADD", conf, stale_id, stale_ns)
    kept = direct(lab, "ADD", conf, kept_id, kept_ns)
    assert stale.returncode == 0 and kept.returncode == 0, (stale.stdout, kept.stdout)

    gc = direct(lab, "GC", {**conf, key: [{"containerID": kept_id, "ifname": "eth0"}]})
    assert gc.returncode == 0 and gc.stdout == "", gc.stdout

    assert attachment_present(lab, h, stale_id, stale.json()) == dict.fromkeys(
        ("veth", "port", "endpoint", "ip"), False)
    assert attachment_present(lab, h, kept_id, kept.json()) == dict.fromkeys(
        ("veth", "port", "endpoint", "ip"), True)
    assert container_addresses(kept_ns) == [kept.json()["ips"][0]["address"]]
    assert direct(lab, "CHECK", {**conf, "prevResult": kept.json()}, kept_id, kept_ns).returncode == 0

    # DEL still works after GC (nothing left to remove), then everything is as before.
    assert direct(lab, "DEL", conf, stale_id, stale_ns).returncode == 0
    assert direct(lab, "DEL", conf, kept_id, kept_ns).returncode == 0
    assert host_snapshot(lab, h) == before


def test_gc_through_the_driver_spares_other_networks(lab: Lab, libcni: Libcni, tmp_path: Path,
                                                     netns_factory: Callable[[], str]) -> None:
    """GC of my-net removes my-net's attachments missing from the valid list, but not blue-net's,
    though that one is not in the list either: a GC is about one network only."""
    h = lab.hosts[0]
    if "/overlay/v1/networks/blue-net" not in host_snapshot(lab, h)["etcd"]:
        ctr.define_network(lab, "blue-net", 43, "10.0.0.0/24")
    stale_ns, kept_ns, blue_ns = netns_factory(), netns_factory(), netns_factory()
    conf = netconf(h, "1.1.0")
    blue = {**conf, "name": "blue-net", "vxlanID": 43}
    before = host_snapshot(lab, h)
    stale = direct(lab, "ADD", conf, "gcd-stale", stale_ns)
    kept = direct(lab, "ADD", conf, "gcd-kept", kept_ns)
    other = direct(lab, "ADD", blue, "gcd-blue", blue_ns)
    assert all(o.returncode == 0 for o in (stale, kept, other)), (stale.stdout, kept.stdout, other.stdout)

    gc = libcni(write_conflist(tmp_path, conflist("1.1.0", ovs_plugin(h))), "gc",
                valid_attachments=[{"containerID": "gcd-kept", "ifname": "eth0"}])
    assert gc.returncode == 0, str(gc)

    assert not any(attachment_present(lab, h, "gcd-stale", stale.json()).values())
    assert all(attachment_present(lab, h, "gcd-kept", kept.json()).values())
    assert all(attachment_present(lab, h, "gcd-blue", other.json(), "blue-net").values())

    for cid, ns, c in (("gcd-stale", stale_ns, conf), ("gcd-kept", kept_ns, conf),
                       ("gcd-blue", blue_ns, blue)):
        assert direct(lab, "DEL", c, cid, ns).returncode == 0
    assert host_snapshot(lab, h) == before


def test_gc_below_1_1_0_deletes_stale_cached_attachments(lab: Lab, libcni: Libcni, tmp_path: Path,
                                                          netns_factory: Callable[[], str]) -> None:
    """libcni 1.2's GC for a 1.0.0 list: no GC verb, but a DEL (with the cached ADD result as
    prevResult) for each cached attachment of the network that is not in the valid list."""
    h = lab.hosts[0]
    conf = write_conflist(tmp_path, conflist("1.0.0", ovs_plugin(h)))
    stale_ns, kept_ns = netns_factory(), netns_factory()
    before = host_snapshot(lab, h)
    stale = libcni(conf, "add", netns=stale_ns, container_id="gcc-stale")
    kept = libcni(conf, "add", netns=kept_ns, container_id="gcc-kept")
    assert stale.returncode == 0 and kept.returncode == 0, (str(stale), str(kept))

    gc = libcni(conf, "gc", valid_attachments=[{"containerID": "gcc-kept", "ifname": "eth0"}])
    assert gc.returncode == 0, str(gc)
    assert not any(attachment_present(lab, h, "gcc-stale", stale.json()).values())
    assert not os.path.exists(libcni.cache_file(NETWORK, "gcc-stale"))
    assert all(attachment_present(lab, h, "gcc-kept", kept.json()).values())
    assert libcni(conf, "check", netns=kept_ns, container_id="gcc-kept").returncode == 0

    assert libcni(conf, "del", netns=kept_ns, container_id="gcc-kept").returncode == 0
    assert host_snapshot(lab, h) == before
