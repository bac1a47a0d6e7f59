"""An in-memory stand-in for the pyetcd client, for unit tests of the Store's verbs.

It keeps what the verbs compare: each key's value, mod revision, version and lease, one global
revision, and leases that can be expired by hand (their keys vanish, as etcd deletes them). It
answers get, put, delete, lease and transaction with the shapes pyetcd returns; `before_txn` is
called before every transaction, so a test can slip a concurrent writer in at exactly that point.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pyetcd import transactions as t
from pyetcd.client import Transactions

from overlay.store.etcd import Store
from overlay.store.lease import HostLease


@dataclass
class Meta:
    key: bytes
    mod_revision: int
    version: int
    lease_id: int


class FakeLease:
    def __init__(self, client: FakeEtcd, lease_id: int, ttl: int) -> None:
        self.client, self.id, self.ttl = client, lease_id, ttl

    def revoke(self) -> None:
        self.client.expire(self.id)

    def refresh(self) -> list[Any]:
        @dataclass
        class Answer:
            TTL: int
        return [Answer(self.ttl if self.id in self.client.leases else 0)]


class FakeEtcd:
    def __init__(self) -> None:
        self.transactions = Transactions()
        self.data: dict[str, tuple[bytes, Meta]] = {}
        self.revision = 1
        self.leases: set[int] = set()
        self.before_txn: Callable[[], None] | None = None

    # --- plain verbs ---------------------------------------------------------------------------

    def get(self, key: str) -> tuple[bytes | None, Meta | None]:
        found = self.data.get(key)
        return (None, None) if found is None else found

    def put(self, key: str, value: str | bytes, lease: Any = None) -> None:
        self.revision += 1
        old = self.data.get(key)
        data = value.encode() if isinstance(value, str) else value
        lease_id = int(getattr(lease, "id", lease or 0))
        self.data[key] = (data, Meta(key.encode(), self.revision,
                                     (old[1].version if old else 0) + 1, lease_id))

    def delete(self, key: str) -> bool:
        if key not in self.data:
            return False
        self.revision += 1
        del self.data[key]
        return True

    def lease(self, ttl: int) -> FakeLease:
        lease_id = 1000 + len(self.leases) + self.revision
        self.leases.add(lease_id)
        return FakeLease(self, lease_id, ttl)

    def expire(self, lease_id: int) -> None:
        """The lease ran out: its keys go, as etcd deletes them."""
        self.leases.discard(lease_id)
        for key in [k for k, (_, m) in self.data.items() if m.lease_id == lease_id]:
            self.delete(key)

    # --- transactions --------------------------------------------------------------------------

    def _holds(self, cmp: Any) -> bool:
        value, meta = self.get(cmp.key)
        if isinstance(cmp, t.Version):
            have: Any = meta.version if meta else 0
        elif isinstance(cmp, t.Mod):
            have = meta.mod_revision if meta else 0
        elif isinstance(cmp, t.Value):
            have, cmp_value = value, cmp.value
            return bool(have == (cmp_value.encode() if isinstance(cmp_value, str) else cmp_value))
        else:
            raise NotImplementedError(type(cmp).__name__)
        return bool(have == cmp.value)

    def _run(self, op: Any) -> Any:
        if isinstance(op, t.Put):
            self.put(op.key, op.value, op.lease)
            return None
        if isinstance(op, t.Delete):
            self.delete(op.key)
            return None
        if isinstance(op, t.Get):
            value, meta = self.get(op.key)
            return [] if value is None else [(value, meta)]
        raise NotImplementedError(type(op).__name__)

    def transaction(self, compare: list[Any], success: list[Any],
                    failure: list[Any]) -> tuple[bool, list[Any]]:
        if self.before_txn is not None:
            hook, self.before_txn = self.before_txn, None  # once: the test's interleaving
            hook()
        ok = all(self._holds(c) for c in compare)
        return ok, [self._run(op) for op in (success if ok else failure)]


def fake_store(client: FakeEtcd | None = None) -> Store:
    """A Store whose client is `client` (a fresh FakeEtcd by default): no channels, no thread."""
    store = Store.__new__(Store)
    store._client = client or FakeEtcd()
    store._tx = store._client.transactions
    store._addresses = [("127.0.0.1", 2379)]
    store.on_error = lambda operation: None
    store._host_lease = HostLease(store.register_host, store._put_back)
    return store
