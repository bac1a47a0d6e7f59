"""Talking to ovsdb-server: bridges, ports and their external_ids, through ovsdbapp.

The agent is the only writer of what it creates. Every port it adds carries external_ids that
name the container, netns, interface and network, so a restarted agent can rebuild its view of
the host from OVSDB alone. Verbs follow ovsdbapp's convention: adds take may_exist, deletes
take if_exists, and errors raise (check_error=True) instead of being logged and dropped.

The connection (and its thread) belongs to ovsdbapp's Connection; callers only submit
transactions to it and wait, bounded by `timeout`.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass
from typing import Any

from ovsdbapp.backend.ovs_idl import connection, transaction
from ovsdbapp.schema.open_vswitch import impl_idl

from overlay.errors import CniError, Code
from overlay.ovs import jsonstream, monitored
from overlay.ovs.ofportwait import NotifyingIdl, Waiters, wait_for

OWNER_KEY = "overlay-owner"  # marks rows this project created
OWNER = "overlay"
GENERATION_KEY = "overlay-flow-generation"
# The generation of the run that last made sure the switch holds its whole table (installed it,
# or found it there: dataplane/wholetable.py). Rules keep the cookie of the run that wrote them.
VERIFIED_KEY = "overlay-flow-verified"
# Open_vSwitch external_ids: which agent installation this is (a random id made at the first
# start). It outlives agent restarts and upgrades with the OVS database, and another machine
# (another database) has another: the host record carries it (store/ownership.py).
AGENT_ID_KEY = "overlay-agent-id"
MAX_OFPORT = 0xFEFF  # the highest number ofport_request takes (OpenFlow's OFPP_MAX - 1)


@dataclass(frozen=True)
class PortInfo:
    name: str
    ofport: int
    external_ids: dict[str, str]


class _PortTransaction(transaction.Transaction):  # type: ignore[misc]
    """A transaction that returns once ovsdb-server has committed it (untyped base, hence the
    ignore). ovsdbapp's Open_vSwitch transactions, like ovs-vsctl without --no-wait, then also
    wait on the IDL's one thread until ovs-vswitchd has applied the whole configuration
    (next_cfg): every other transaction of the agent queued behind that wait (10-25 ms per port
    serially, a port's ADD behind nine others' reconfigurations with 10 at once). The caller of
    a port waits for what it needs instead, its ofport (wait_ofport), on its own thread
    (ensure_port's `vswitchd_applied`).
    """

    def pre_commit(self, txn: Any) -> None:
        txn.expected_ifaces = set()  # add_port records its new interface there


class Ovsdb:
    def __init__(self, *, endpoint: str, timeout: float = 10.0) -> None:
        self._timeout = timeout
        self._request_lock = threading.Lock()
        self._last_request: int | None = None  # request_ofport's last number
        jsonstream.install()  # python-ovs without its C parser: parse with CPython's (why: there)
        try:
            idl = NotifyingIdl(endpoint, monitored.schema_helper(endpoint))
            idl.waiters = self._waiters = Waiters()  # before the connection runs the IDL
            self._conn = connection.Connection(idl=idl, timeout=timeout)
            # ovsdbapp keeps the first connection of a Backend class for every later instance
            # (a class attribute): a class of its own makes this instance use its own.
            api_class = type("OvsdbApi", (impl_idl.OvsdbIdl,), {"_ovsdb_connection": None})
            self.api: Any = api_class(self._conn)
        except Exception as exc:
            raise CniError(Code.OVS_FAILURE, f"cannot connect to OVSDB at {endpoint}",
                           str(exc)) from None

    def close(self) -> None:
        self._conn.stop(timeout=self._timeout)

    def _execute(self, what: str, *commands: Any, vswitchd_applied: bool = True) -> list[Any]:
        """Commit `commands` in one transaction. `vswitchd_applied`: also wait until
        ovs-vswitchd has applied it (ovs-vsctl's default), else only for ovsdb-server."""
        try:
            if vswitchd_applied:
                with self.api.transaction(check_error=True) as txn:
                    txn.extend(commands)
            else:
                with _PortTransaction(self.api, self._conn, self._timeout,
                                      check_error=True) as txn:
                    txn.extend(commands)
            return list(txn.result or [])
        except CniError:
            raise
        except Exception as exc:
            raise CniError(Code.OVS_FAILURE, f"OVSDB refused to {what}", str(exc)) from None

    def _read(self, what: str, command: Any) -> Any:
        try:
            return command.execute(check_error=True)
        except Exception as exc:
            raise CniError(Code.OVS_FAILURE, f"OVSDB could not {what}", str(exc)) from None

    def connected(self) -> bool:
        # python-ovs exposes the live state only on the IDL's session object.
        try:
            return bool(self._conn.idl._session.is_connected())
        except Exception:
            return False

    # --- bridges ------------------------------------------------------------------------------

    def ensure_bridge(self, name: str, *, datapath_type: str, secure: bool,
                      other_config: dict[str, str] | None = None) -> None:
        """Create `name` if absent and set its datapath, protocols and fail mode. Idempotent."""
        cols: dict[str, Any] = {
            "datapath_type": datapath_type,
            # OpenFlow 1.4 is needed for atomic bundles (ovs-ofctl --bundle).
            "protocols": ["OpenFlow10", "OpenFlow13", "OpenFlow14"],
            "external_ids": {OWNER_KEY: OWNER},
        }
        if secure:  # no NORMAL fallback: nothing is forwarded that our flows do not allow
            cols["fail_mode"] = "secure"
        if other_config:
            cols["other_config"] = other_config
        self._execute(f"create bridge {name}",
                      self.api.add_br(name, may_exist=True, datapath_type=datapath_type),
                      self.api.db_set("Bridge", name, *cols.items()))

    def next_generation(self, bridge: str) -> int:
        """Bump and return the flow generation kept in the bridge's external_ids."""
        ids = self._read(f"read bridge {bridge}", self.api.db_get("Bridge", bridge, "external_ids"))
        current = dict(ids or {}).get(GENERATION_KEY)
        generation = (int(current) if current and str(current).isdigit() else 0) + 1
        self._execute(f"record the flow generation on {bridge}",
                      self.api.br_set_external_id(bridge, GENERATION_KEY, str(generation)))
        return generation

    def record_verified(self, bridge: str, generation: int) -> None:
        """This run's whole table is in the switch (VERIFIED_KEY)."""
        self._execute(f"record the verified flow generation on {bridge}",
                      self.api.br_set_external_id(bridge, VERIFIED_KEY, str(generation)))

    def agent_id(self) -> str:
        """This installation's id, made and recorded at the first call."""
        ids = self._read("read Open_vSwitch external_ids",
                         self.api.db_get("Open_vSwitch", ".", "external_ids"))
        current = dict(ids or {}).get(AGENT_ID_KEY)
        if current:
            return str(current)
        made = uuid.uuid4().hex
        self._execute("record the agent id", self.api.db_set(
            "Open_vSwitch", ".", ("external_ids", {AGENT_ID_KEY: made})))
        return made

    # --- ports --------------------------------------------------------------------------------

    def request_ofport(self) -> int:
        """An OpenFlow port number for ensure_port's `ofport_request`, so that a caller knows
        it before ovs-vswitchd has attached the port (ADD installs the container's flows
        while it waits for that). No interface has it or asked for it, and the numbers go
        round from the highest in use: one this run handed out, or a port just deleted had,
        is not given again before the other 65,000 (nor can two calls get the same). OVS
        gives another number if it cannot honour the request: ensure_port returns the one
        it gave, which the caller compares."""
        with self._conn.lock:  # the IDL thread changes rows only while it holds this lock
            taken = {n for row in self._conn.idl.tables["Interface"].rows.values()
                     for n in (*row.ofport, *row.ofport_request) if isinstance(n, int)}
        with self._request_lock:
            last = self._last_request
            if last is None:
                last = max((n for n in taken if n <= MAX_OFPORT), default=0)
            for _ in range(MAX_OFPORT):
                last = last % MAX_OFPORT + 1
                if last not in taken:
                    self._last_request = last
                    return last
        raise CniError(Code.OVS_FAILURE, "no OpenFlow port number is free")

    def ensure_port(self, bridge: str, name: str, *, iface: dict[str, Any] | None = None,
                    external_ids: dict[str, str] | None = None,
                    ofport_request: int | None = None, vswitchd_applied: bool = True) -> int:
        """Add port `name` to `bridge` (or update it) and return its OpenFlow port number
        (`ofport_request`, from request_ofport, if OVS could honour it).

        Waits until ovs-vswitchd has attached the interface: a port without a valid ofport
        is a failure (the interface is missing or the datapath refused it), not a success.
        `vswitchd_applied` False: only that, not also until ovs-vswitchd has applied the whole
        configuration (_PortTransaction). Enough for a device the caller made (a container's
        veth); not for an internal port, whose device ovs-vswitchd makes and configures: with
        only its ofport awaited, a gateway's kernel side failed now and then with ENODEV (2 of
        ~60 first ADDs).
        """
        ids = {OWNER_KEY: OWNER, **(external_ids or {})}
        iface_cols: dict[str, Any] = {"external_ids": ids, **(iface or {})}
        if ofport_request is not None:
            iface_cols["ofport_request"] = ofport_request
        self._execute(f"add port {name} to {bridge}",
                      self.api.add_port(bridge, name, may_exist=True),
                      self.api.db_set("Interface", name, *iface_cols.items()),
                      self.api.db_set("Port", name, ("external_ids", ids)),
                      vswitchd_applied=vswitchd_applied)
        return self.wait_ofport(name)

    def wait_ofport(self, name: str) -> int:
        """The interface's ofport once ovs-vswitchd has attached it (ofportwait.py: woken by
        the IDL when the row changes, no polling); a failure if it cannot be attached."""
        ofport = wait_for(self._waiters, name, lambda: self._attached(name), self._timeout)
        if ofport is None:
            raise CniError(Code.OVS_FAILURE, f"OVS could not attach interface {name}",
                           f"no ofport after {self._timeout:.0f} s")
        return ofport

    def _attached(self, name: str) -> int | None:
        """The ofport of interface `name` in the IDL's copy of the database: a number, None
        while ovs-vswitchd has not attached it yet, CniError if it refused to."""
        with self._conn.lock:  # the IDL thread changes rows only while it holds this lock
            rows = [r for r in self._conn.idl.tables["Interface"].rows.values()
                    if r.name == name]
            ofport = rows[0].ofport[0] if rows and rows[0].ofport else None
            error = rows[0].error[0] if rows and rows[0].error else ""
        if isinstance(ofport, int) and ofport > 0:
            return ofport
        if error or ofport == -1:
            raise CniError(Code.OVS_FAILURE, f"OVS could not attach interface {name}",
                           error or f"ofport is {ofport}")
        return None

    def delete_port(self, name: str) -> None:
        self._execute(f"delete port {name}", self.api.del_port(name, if_exists=True))

    def ports(self, bridge: str) -> list[PortInfo]:
        """Every port of `bridge` with its ofport and the Interface's external_ids."""
        names = self._read(f"list the ports of {bridge}", self.api.list_ports(bridge))
        out = []
        rows = self._read(f"list the interfaces of {bridge}",
                          self.api.db_list_rows("Interface", names, if_exists=True))
        for row in rows:
            ofport = row.ofport[0] if row.ofport else -1
            out.append(PortInfo(row.name, ofport, dict(row.external_ids)))
        return out

    def _interface_rows(self, name: str) -> list[Any]:
        return list(self._read(f"look up interface {name}",
                               self.api.db_find_rows("Interface", ("name", "=", name))))

    def ofport(self, name: str) -> int | None:
        """The interface's OpenFlow port number, or None if there is no such usable port."""
        rows = self._interface_rows(name)
        ofport = rows[0].ofport[0] if rows and rows[0].ofport else None
        return ofport if isinstance(ofport, int) and ofport > 0 else None

    def port_external_ids(self, name: str) -> dict[str, str]:
        """external_ids of the interface; empty if there is no such interface."""
        rows = self._interface_rows(name)
        return dict(rows[0].external_ids) if rows else {}
