"""Talking to ovsdb-server: bridges, ports and their external_ids, through ovsdbapp.

The agent is the only writer of what it creates. Every port it adds carries external_ids that
name the container, netns, interface and network, so a restarted agent can rebuild its view of
the host from OVSDB alone. Verbs follow ovsdbapp's convention: adds take may_exist, deletes
take if_exists, and errors raise (check_error=True) instead of being logged and dropped.

The connection (and its thread) belongs to ovsdbapp's Connection; callers only submit
transactions to it and wait, bounded by `timeout`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from ovsdbapp.backend.ovs_idl import connection
from ovsdbapp.schema.open_vswitch import impl_idl

from overlay.errors import CniError, Code
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


@dataclass(frozen=True)
class PortInfo:
    name: str
    ofport: int
    external_ids: dict[str, str]


class Ovsdb:
    def __init__(self, *, endpoint: str, timeout: float = 10.0) -> None:
        self._timeout = timeout
        try:
            idl = NotifyingIdl.from_server(endpoint, "Open_vSwitch")
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

    def _execute(self, what: str, *commands: Any) -> list[Any]:
        try:
            with self.api.transaction(check_error=True) as txn:
                for command in commands:
                    txn.add(command)
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

    def ensure_port(self, bridge: str, name: str, *, iface: dict[str, Any] | None = None,
                    external_ids: dict[str, str] | None = None) -> int:
        """Add port `name` to `bridge` (or update it) and return its OpenFlow port number.

        Waits until ovs-vswitchd has attached the interface: a port without a valid ofport
        is a failure (the interface is missing or the datapath refused it), not a success.
        """
        ids = {OWNER_KEY: OWNER, **(external_ids or {})}
        iface_cols: dict[str, Any] = {"external_ids": ids, **(iface or {})}
        self._execute(f"add port {name} to {bridge}",
                      self.api.add_port(bridge, name, may_exist=True),
                      self.api.db_set("Interface", name, *iface_cols.items()),
                      self.api.db_set("Port", name, ("external_ids", ids)))
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
