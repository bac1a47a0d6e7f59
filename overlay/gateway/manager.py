"""Which networks have a gateway on this host, and keeping each one whole.

A network has a gateway here exactly while it has a container here: the first ADD in it
creates the gateway (OVS internal port, kernel address and routes, iptables rules, flows), the
last DEL removes all of it. Users are counted by endpoint key, under one lock, so an ADD and a
DEL of the same network racing on two threads cannot leave a container without its gateway or
a gateway without containers.

Every step is idempotent, so `restore` (agent start, ovs-vswitchd restart) simply runs the
install again for every gateway port OVSDB knows (the port's external_ids hold its spec) that
still has users, and removes the others. ovs-vswitchd recreates the port's interface on
restart but not its address or routes; the rules and iptables entries survive an agent
restart and are checked (-C) rather than duplicated.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures

from pyroute2.netlink.exceptions import NetlinkError

from overlay.dataplane.dataplane import Dataplane
from overlay.dataplane.flows import Gateway
from overlay.errors import CniError, Code
from overlay.gateway import isolation, kernel, nat
from overlay.gateway.spec import GatewaySpec, from_external_ids
from overlay.ovs.ovsdb import Ovsdb

log = logging.getLogger(__name__)


class GatewayManager:
    def __init__(self, *, ovs: Ovsdb, dataplane: Dataplane, bridge: str) -> None:
        self._ovs = ovs
        self._dataplane = dataplane
        self._bridge = bridge
        self._lock = threading.Lock()
        self._specs: dict[int, GatewaySpec] = {}
        self._users: dict[int, set[str]] = {}
        self._vni_of: dict[str, int] = {}
        # nat.ensure, kernel.prepare and isolation.apply beside the port and the kernel side,
        # the flows beside the kernel side (_install); installs are serialised by self._lock,
        # so four threads are enough.
        self._beside = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="gw-beside")

    # --- intent ---------------------------------------------------------------------------

    def acquire(self, key: str, spec: GatewaySpec) -> None:
        """Endpoint `key` needs `spec`'s gateway: create it if it is the first. Idempotent;
        all-or-nothing for a new gateway."""
        with self._lock:
            current = self._specs.get(spec.vni)
            others = self._users.get(spec.vni, set()) - {key}
            if current == spec and others:
                # In place already: no subprocess on the ADD path of every later container
                # (repair() puts back what someone removed behind our back).
                self._users[spec.vni].add(key)
                self._vni_of[key] = spec.vni
                return
            if current is not None and current != spec and others:
                raise CniError(Code.NETWORK_CONFLICT,
                               f"network {spec.network} has gateway {current.address} "
                               f"(ipMasq {current.masquerade}, MTU {current.mtu}) on this "
                               f"host; the netconf asks for {spec.address} (ipMasq "
                               f"{spec.masquerade}, MTU {spec.mtu})",
                               "every container of a network must use the same netconf")
            for other in self._specs.values():
                if other.vni != spec.vni and other.zone == spec.zone:
                    raise CniError(Code.NETWORK_CONFLICT,
                                   f"VNIs {other.vni} and {spec.vni} share conntrack zone "
                                   f"{spec.zone} on this host (zones are 16 bits)",
                                   "use VNIs that differ modulo 65535 on one host")
            if current is not None and current != spec:  # no one else uses the old one
                self._uninstall(current)
            try:
                # Before any container of it runs, the new network and the others are kept
                # apart by routing, whatever FORWARD holds (isolation.py): done by the install.
                holder = self._install(spec, isolate=[
                    *(s for s in self._specs.values() if s.vni != spec.vni), spec])
            except BaseException:
                if not others:
                    self._uninstall(spec)
                    self._specs.pop(spec.vni, None)
                raise
            self._specs[spec.vni] = spec
            self._users.setdefault(spec.vni, set()).add(key)
            self._vni_of[key] = spec.vni
        if holder is not None:
            log.warning("network %s: subnet %s overlaps the subnet of %s on this host; its "
                        "containers have egress, but the host and published ports reach "
                        "only %s's", spec.network, spec.subnet, holder, holder)

    def release(self, key: str) -> None:
        """Endpoint `key` is gone; the network's last one takes the gateway with it."""
        with self._lock:
            vni = self._vni_of.pop(key, None)
            if vni is None:
                return
            users = self._users.get(vni, set())
            users.discard(key)
            if users:
                return
            spec = self._specs.pop(vni)
            self._users.pop(vni, None)
            self._uninstall(spec)
            self._isolate()
            # A network with an overlapping subnet may now take over the main-table route.
            for other in self._specs.values():
                if other.subnet.overlaps(spec.subnet):
                    try:
                        kernel.ensure(other)
                    except CniError as err:  # DEL succeeded; the next restore retries
                        log.warning("gateway %s could not take over %s: %s", other.port,
                                    other.subnet, err)

    def restore(self, users: dict[int, set[str]]) -> None:
        """Bring every gateway recorded in OVSDB back (or remove it if `users`, the local
        endpoints by VNI, has none for it). At start and after ovs-vswitchd restarted."""
        with self._lock:
            for port in self._ovs.ports(self._bridge):
                spec = from_external_ids(port.external_ids)
                if spec is None or port.name != spec.port:
                    continue
                keys = users.get(spec.vni, set())
                if not keys:
                    log.info("removing gateway %s: no container of %s left here",
                             spec.port, spec.network)
                    self._uninstall(spec)
                    continue
                try:
                    self._install(spec)
                except CniError as err:
                    log.error("cannot restore gateway %s: %s", spec.port, err)
                    continue
                self._specs[spec.vni] = spec
                self._users[spec.vni] = set(keys)
                for key in keys:
                    self._vni_of[key] = spec.vni
            self._isolate()

    def repair(self) -> list[str]:
        """Re-install every gateway that lost a piece (a deleted iptables rule, route or
        address). Run periodically by the agent; returns the ports repaired."""
        with self._lock:
            specs = list(self._specs.values())
        repaired = []
        for spec in specs:
            try:
                if not (kernel.problems(spec) or nat.missing(spec)):
                    continue
                with self._lock:
                    if self._specs.get(spec.vni) != spec:
                        continue  # removed or replaced meanwhile
                    log.warning("gateway %s was incomplete; installing it again", spec.port)
                    self._install(spec)
                    repaired.append(spec.port)
            except (CniError, OSError, NetlinkError) as err:  # next round tries again
                log.warning("cannot repair gateway %s: %s", spec.port, err)
        try:
            if isolation.problems(specs):
                with self._lock:
                    log.warning("the separation of the networks' gateways was incomplete; "
                                "restoring it")
                    self._isolate()
                    repaired.append("isolation")
        except (CniError, OSError, NetlinkError) as err:
            log.warning("cannot check the separation of the gateways: %s", err)
        return repaired

    # --- reading --------------------------------------------------------------------------

    def close(self) -> None:
        """Ends the thread that writes NAT rules beside the rest of an install (the agent's
        stop, once no ADD can come)."""
        self._beside.shutdown(wait=True)

    def spec(self, vni: int) -> GatewaySpec | None:
        with self._lock:
            return self._specs.get(vni)

    def problems(self, spec: GatewaySpec) -> list[str]:
        """What is wrong with `spec`'s gateway on this host (CHECK; doctor)."""
        current = self.spec(spec.vni)
        if current is None:
            return [f"network {spec.network} has no gateway on this host"]
        if current != spec:
            return [f"the gateway of {spec.network} is {current.address} (ipMasq "
                    f"{current.masquerade}), the netconf says {spec.address} (ipMasq "
                    f"{spec.masquerade})"]
        out = kernel.problems(spec) + [f"missing: {rule}" for rule in nat.missing(spec)]
        gw = self._dataplane.gateway(spec.vni)
        if gw is None or not self._dataplane.switch_has_gateway(gw):
            out.append(f"the switch does not send {spec.mac} to {spec.port}")
        return out

    def doctor(self) -> list[str]:
        """Every gateway's problems, and gateway artifacts nobody owns."""
        with self._lock:
            specs = list(self._specs.values())
        out = [f"gateway {s.port} ({s.network}): {p}" for s in specs for p in self.problems(s)]
        out += [f"isolation: {p}" for p in isolation.problems(specs)]
        out += kernel.leftovers(specs)
        wanted = {s.comment for s in specs}
        out += [f"{count} iptables rules tagged {comment} have no gateway behind them"
                for comment, count in sorted(nat.all_tagged().items()) if comment not in wanted]
        # Overlapping subnets are a documented limit (the host reaches one of them), logged
        # at ADD; not a fault doctor would fail on.
        return out

    # --- mechanics (callers hold the lock) ---------------------------------------------------

    def _isolate(self) -> None:
        """Routing separation of every gateway from the others (isolation.py)."""
        try:
            isolation.apply(list(self._specs.values()))
        except CniError as err:  # the periodic repair tries again
            log.warning("cannot separate the gateways: %s", err)

    def _install(self, spec: GatewaySpec,
                 isolate: list[GatewaySpec] | None = None) -> str | None:
        """Returns the gateway port that keeps the main-table route of an overlapping subnet.
        `isolate`: every gateway of the host, this one included, to separate by routing
        (isolation.apply) as part of the install.

        What needs no port goes in while OVS creates it: the iptables rules (two iptables
        processes, nat.py; they name the interface), the policy-routing rules and the
        isolation tables (rules match the port by name, which the kernel accepts before the
        device exists), IPv4 forwarding. The flows need only the port's number, so they go in
        while the port's kernel side is configured. A network's first ADD waits for all of
        it: in a row, it was three times an ADD's own work. All are done, or failed, before
        this returns, so a caller's rollback (_uninstall) never races a rule or flow still
        being written."""
        laps = [time.perf_counter()]
        pending = [self._beside.submit(nat.ensure, spec),
                   self._beside.submit(kernel.prepare, spec)]
        if isolate is not None:
            pending.append(self._beside.submit(isolation.apply, isolate))
        try:
            # A new gateway's number from the same allocator as containers' ports
            # (request_ofport): left to OVS, it could be given the number a container's port,
            # added beside it, had just requested; ovs-vswitchd then deleted and re-added the
            # gateway's internal port to honour the request, and its kernel side failed with
            # ENODEV. An existing gateway (restore) keeps its number: no request.
            existing = self._ovs.ofport(spec.port)
            ofport = self._ovs.ensure_port(
                self._bridge, spec.port,
                iface={"type": "internal", "mac": spec.mac, "mtu_request": spec.mtu},
                external_ids=spec.external_ids(),
                ofport_request=None if existing else self._ovs.request_ofport())
            laps.append(time.perf_counter())
            pending.append(self._beside.submit(
                self._dataplane.set_gateway, spec.vni,
                Gateway(spec.vni, spec.mac, str(spec.address.ip), ofport)))
            holder = kernel.configure(spec)
            laps.append(time.perf_counter())
        finally:
            futures.wait(pending)
        for step in pending:
            step.result()  # its failure is the install's
        laps.append(time.perf_counter())
        log.info("gateway %s installed (%.0f ms: %s)", spec.port, (laps[-1] - laps[0]) * 1000,
                 " ".join(f"{step} {(b - a) * 1000:.0f}" for step, a, b in
                          zip(("port", "kernel", "rules, iptables and flows (rest)"), laps, laps[1:],
                              strict=False)))
        return holder

    def _uninstall(self, spec: GatewaySpec) -> None:
        steps: list[Callable[[], object]] = [
            lambda: self._dataplane.set_gateway(spec.vni, None),
            lambda: isolation.remove(spec),
            lambda: nat.remove(spec.comment),
            lambda: kernel.remove(spec),
            lambda: self._ovs.delete_port(spec.port),
        ]
        for step in steps:  # every step, even if one fails: leave as little as possible
            try:
                step()
            except CniError as err:
                log.warning("removing gateway %s: %s", spec.port, err)


def spec_for(network: str, vni: int, gateway: tuple[ipaddress.IPv4Address,
                                                  ipaddress.IPv4Network],
             masquerade: bool, mtu: int) -> GatewaySpec:
    ip, subnet = gateway
    return GatewaySpec(network, vni, ipaddress.IPv4Interface(f"{ip}/{subnet.prefixlen}"),
                       masquerade, mtu)
