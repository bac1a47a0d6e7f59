"""Writes that compare the owner: a host changes only what names it.

Endpoint and host records are JSON, and etcd compares a key's whole value or its revisions,
never a field inside the value. So each verb here reads the key, decides on the owner it
parsed, and writes in a transaction that compares the mod revision it read: if anything changed
the key in between, the transaction fails and the decision is taken again on what is there now.
"Read, decide, write if unchanged" is the compare-and-swap flannel uses for its subnet leases.

- Endpoint records (put_endpoint, delete_endpoint, set_labels): only the host the record
  names writes or deletes it. A DEL on another host (a runtime's DEL after its ADD was refused
  because the container ID is attached elsewhere) deletes nothing and succeeds, as CNI DEL must.
- The host record (claim_host): a host name belongs to one agent installation, identified by
  HostRecord.agent_id (a random id kept in the host's OVSDB, so it survives restarts and
  upgrades). A live record (one that has a lease) of another installation refuses the claim.
  Records of agents from before agent_id are told apart by their VTEP: the same machine
  restarting has the same one.

These functions take the pyetcd client and let its exceptions through: the Store's verbs wrap
them (overlay/store/etcd.py, etcd_call).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from overlay.errors import CniError, Code
from overlay.store import records as r

log = logging.getLogger(__name__)

ATTEMPTS = 5  # transactions lost to concurrent writers before giving up ("try again later")


class HostNameTaken(Exception):
    """Another live agent installation holds this host name: refuse to start (or to take the
    name back) rather than tear down its endpoints and free its addresses."""


def _current(found: Any) -> tuple[bytes, Any] | None:
    """(value, metadata) of the one Get in a transaction's failure branch, or None."""
    if not found or not found[0]:
        return None
    value, meta = found[0][0]
    return value, meta


def record_host(value: bytes) -> str | None:
    """The `host` field of a JSON record; None if the record is not readable as ours."""
    try:
        obj = json.loads(value)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    host = obj.get("host") if isinstance(obj, dict) else None
    return host if isinstance(host, str) else None


def _owner_text(owner: str | None) -> str:
    return f"host {owner}" if owner is not None else "an unreadable record (not ours)"


def put_endpoint(client: Any, key: str, value: str, host: str, what: str) -> None:
    """Create the endpoint record at `key`, or replace it if it names `host`.

    Raises CniError(ALREADY_ATTACHED) naming the owner when it belongs to another host."""
    tx = client.transactions
    for _ in range(ATTEMPTS):
        ok, found = client.transaction(compare=[tx.version(key) == 0],
                                       success=[tx.put(key, value)], failure=[tx.get(key)])
        if ok:
            return
        current = _current(found)
        if current is None:
            continue  # deleted in between: create it
        owner = record_host(current[0])
        if owner != host:
            raise CniError(Code.ALREADY_ATTACHED,
                           f"{what} is already attached on {_owner_text(owner)}",
                           "container IDs must be unique across the cluster; DEL it there, or "
                           "use another container ID")
        ok, _ = client.transaction(compare=[tx.mod(key) == current[1].mod_revision],
                                   success=[tx.put(key, value)], failure=[])
        if ok:
            return
    raise CniError(Code.TRY_AGAIN_LATER, f"endpoint record {key} keeps changing; try again")


def delete_endpoint(client: Any, key: str, host: str) -> str | None:
    """Delete the endpoint record at `key` if it names `host`. Idempotent.

    Returns None when the record is gone (deleted now or before), else the owner it names
    (another host's name, or "?" for an unreadable record), which is left in place."""
    tx = client.transactions
    for _ in range(ATTEMPTS):
        value, meta = client.get(key)
        if value is None:
            return None
        owner = record_host(value)
        if owner != host:
            log.info("not deleting %s: it belongs to %s, not to %s", key, _owner_text(owner),
                     host)
            return owner if owner is not None else "?"
        ok, _ = client.transaction(compare=[tx.mod(key) == meta.mod_revision],
                                   success=[tx.delete(key)], failure=[])
        if ok:
            return None
    raise CniError(Code.TRY_AGAIN_LATER, f"endpoint record {key} keeps changing; try again")


def set_labels(client: Any, key: str, labels: dict[str, str], *, host: str,
               netns: str) -> bool:
    """Replace the labels of the endpoint record at `key`, nothing else, if it still is the
    attachment they were read for: it names `host` and the network namespace `netns`.

    False when it is not (gone, another host's, unreadable, or a new attachment under the same
    key: the Docker driver's keys come back with an address). A label writer that runs after
    the attachment was made must never bring back a deleted record or label another one."""
    tx = client.transactions
    for _ in range(ATTEMPTS):
        value, meta = client.get(key)
        if value is None:
            return False
        try:
            rec = r.EndpointRecord.from_json(value)
        except (ValueError, TypeError, KeyError, RecursionError):
            return False
        if rec.host != host or rec.netns != netns:
            return False
        if rec.labels == labels:
            return True  # already so (labelled again after a restart): no write, no watch event
        new = dataclasses.replace(rec, labels=dict(labels)).to_json()
        ok, _ = client.transaction(compare=[tx.mod(key) == meta.mod_revision],
                                   success=[tx.put(key, new)], failure=[])
        if ok:
            return True
    raise CniError(Code.TRY_AGAIN_LATER, f"endpoint record {key} keeps changing; try again")


def _foreign_holder(rec: r.HostRecord, value: bytes, meta: Any) -> str | None:
    """Why the record found at our host key belongs to another live agent, or None."""
    if not meta.lease_id:
        return None  # not leased: no agent keeps it alive (written by hand, say)
    try:
        other = r.HostRecord.from_json(value)
    except (ValueError, TypeError, KeyError, RecursionError):
        return None  # not a host record at all: nobody's, ours to replace
    if other.agent_id:
        if other.agent_id != rec.agent_id:
            return f"agent installation {other.agent_id} (VTEP {other.vtep})"
        return None
    if other.vtep != rec.vtep:  # an agent from before agent_id, on another machine
        return f"an agent with VTEP {other.vtep}"
    return None


def claim_host(client: Any, rec: r.HostRecord, lease: Any) -> None:
    """Write our host record under `lease`, unless another live agent holds the name.

    Our own record (same agent_id: this installation restarted, its old lease still alive)
    is taken over: the key moves to the new lease."""
    key, tx = r.host_key(rec.host), client.transactions
    put = tx.put(key, rec.to_json(), lease=lease)
    for _ in range(ATTEMPTS):
        ok, found = client.transaction(compare=[tx.version(key) == 0], success=[put],
                                       failure=[tx.get(key)])
        if ok:
            return
        current = _current(found)
        if current is None:
            continue
        foreign = _foreign_holder(rec, *current)
        if foreign is not None:
            raise HostNameTaken(f"host name {rec.host!r} is held by another live agent: "
                                f"{foreign}; give this host another name (agent `host` setting)"
                                f", or stop that agent and wait for its lease to expire")
        ok, _ = client.transaction(compare=[tx.mod(key) == current[1].mod_revision],
                                   success=[put], failure=[])
        if ok:
            return
    raise CniError(Code.TRY_AGAIN_LATER, f"host record {key} keeps changing; try again")
