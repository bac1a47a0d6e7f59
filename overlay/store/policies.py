"""Network policies in etcd: one key per policy, its value policy_to_dict() as JSON.

    /overlay/v1/policies/<network>/<name>   -> {"name", "network", "priority", ...}

Operators write them (overlayctl policy, with the operator's etcd user); hosts only read them
(their etcd role is read-only on this prefix: overlay/lab/etcdauth.py, docs/security.md). The
agent follows the prefix with the existing watch helper (store/watch.py: snapshot, watch,
resync after compaction) and decodes each value with decode_policy(), which treats it as
untrusted: too large, not JSON, not a valid policy, or naming another network or name than its
key -> PolicyError, and the agent counts and ignores it (reason "bad_policy").
"""

from __future__ import annotations

import json
from collections.abc import Callable

from overlay.policy.model import Policy, PolicyError, parse_policy, policy_to_dict
from overlay.store import records as r
from overlay.store.etcd import Store, etcd_call

POLICIES = r.ROOT + "policies/"
MAX_POLICY_BYTES = 256 * 1024  # an etcd record is untrusted: bound what the parser is given
TXN_OPS = 100                  # puts per transaction: under etcd's --max-txn-ops (128)


def policy_prefix(network: str) -> str:
    return f"{POLICIES}{network}/"


def policy_key(network: str, name: str) -> str:
    return f"{POLICIES}{network}/{name}"


def encode_policy(policy: Policy) -> str:
    return json.dumps(policy_to_dict(policy), sort_keys=True, separators=(",", ":"))


def decode_policy(key: str, value: bytes) -> Policy:
    """The policy stored under `key`, or PolicyError saying why it is not to be believed."""
    if len(value) > MAX_POLICY_BYTES:
        raise PolicyError("", f"{len(value)} bytes (at most {MAX_POLICY_BYTES})")
    try:
        doc = json.loads(value.decode())
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise PolicyError("", f"not JSON ({type(exc).__name__})") from None
    policy = parse_policy(doc)
    if key != policy_key(policy.network, policy.name):
        # One network's record must not pose as another's policy (or shadow another name).
        raise PolicyError("name", f"the record says {policy.network}/{policy.name}, its key "
                                  f"{key}")
    return policy


@etcd_call
def put_policy(store: Store, policy: Policy) -> None:
    store.client.put(policy_key(policy.network, policy.name), encode_policy(policy))


@etcd_call
def put_policies(store: Store, policies: list[Policy]) -> None:
    """Every policy written, TXN_OPS to a transaction (a file of a few policies: all or none)."""
    tx = store.client.transactions
    for start in range(0, len(policies), TXN_OPS):
        puts = [tx.put(policy_key(p.network, p.name), encode_policy(p))
                for p in policies[start:start + TXN_OPS]]
        store.client.transaction(compare=[], success=puts, failure=[])


@etcd_call
def delete_policy(store: Store, network: str, name: str) -> bool:
    """True if it existed (deleting one that does not is no error: idempotent)."""
    return bool(store.client.delete(policy_key(network, name)))


@etcd_call
def get_raw(store: Store, network: str, name: str) -> bytes | None:
    value, _ = store.client.get(policy_key(network, name))
    return None if value is None else bytes(value)


def get_policy(store: Store, network: str, name: str) -> Policy | None:
    """The policy, None if there is none, PolicyError if the stored one is not valid."""
    value = get_raw(store, network, name)
    return None if value is None else decode_policy(policy_key(network, name), value)


def list_policies(store: Store, network: str | None = None, *,
                  on_bad: Callable[[str, PolicyError], None] | None = None) -> list[Policy]:
    """Valid policies of one network (None: all), sorted by key; invalid records are passed
    to `on_bad` (key, why) and left out."""
    out = []
    for item in store.read_prefix(policy_prefix(network) if network else POLICIES)[1]:
        try:
            out.append(decode_policy(item.key, item.value))
        except PolicyError as err:
            if on_bad is not None:
                on_bad(item.key, err)
    return out
