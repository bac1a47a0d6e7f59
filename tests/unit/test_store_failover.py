"""How a Store call fails over between etcd members (no etcd: the calls are scripted)."""

from __future__ import annotations

import pyetcd.exceptions
import pytest

from overlay.errors import CniError, Code
from overlay.store import etcd
from overlay.store.etcd import Store, etcd_call


def _store(members: int) -> Store:
    store = Store.__new__(Store)  # no channels: only what etcd_call reads
    store._addresses = [("127.0.0.1", 2379 + i) for i in range(members)]
    store.failed = []
    store.on_error = store.failed.append
    return store


class Scripted:
    """A Store verb that raises the given exceptions in turn, then answers "ok"."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.__name__ = "_get"  # what on_error is told, without the underscore

    def __call__(self, store: Store) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def test_all_members_benched_at_once_is_waited_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # One member died; threads failing on it benched the two healthy ones as well.
    slept: list[float] = []
    monkeypatch.setattr(etcd.time, "sleep", slept.append)
    verb = Scripted(pyetcd.exceptions.ConnectionFailedError(),
                    pyetcd.exceptions.NoServerAvailableError("all benched"),
                    pyetcd.exceptions.NoServerAvailableError("all benched"))
    store = _store(3)
    assert etcd_call(verb)(store) == "ok"
    assert verb.calls == 4 and slept == [etcd.RETRY_AFTER] * 2 and store.failed == []


def test_cluster_down_is_try_again_later_after_bounded_attempts(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd.time, "sleep", lambda s: None)
    verb = Scripted(*[pyetcd.exceptions.ConnectionFailedError()] * 20)
    store = _store(3)
    with pytest.raises(CniError) as err:
        etcd_call(verb)(store)
    assert err.value.code == Code.TRY_AGAIN_LATER and verb.calls == 6
    assert store.failed == ["get"]


def test_single_member_unreachable_says_try_again_at_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcd.time, "sleep", lambda s: pytest.fail("a refused call never waits"))
    verb = Scripted(pyetcd.exceptions.ConnectionFailedError())
    with pytest.raises(CniError) as err:
        etcd_call(verb)(_store(1))
    assert err.value.code == Code.TRY_AGAIN_LATER and verb.calls == 1


def test_single_member_benched_by_another_call_is_waited_out_once(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Another thread's call failed during a blip and benched the only member: this call was
    # never sent. It waits the bench out and tries for real.
    slept: list[float] = []
    monkeypatch.setattr(etcd.time, "sleep", slept.append)
    verb = Scripted(pyetcd.exceptions.NoServerAvailableError("benched"))
    assert etcd_call(verb)(_store(1)) == "ok"
    assert verb.calls == 2 and slept == [etcd.RETRY_AFTER]


def test_single_member_still_down_after_the_bench_says_try_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(etcd.time, "sleep", slept.append)
    verb = Scripted(pyetcd.exceptions.NoServerAvailableError("benched"),
                    pyetcd.exceptions.ConnectionFailedError(),
                    pyetcd.exceptions.NoServerAvailableError("benched"))
    with pytest.raises(CniError) as err:
        etcd_call(verb)(_store(1))
    assert err.value.code == Code.TRY_AGAIN_LATER and verb.calls == 2
    assert slept == [etcd.RETRY_AFTER]


def test_refusal_is_not_retried() -> None:
    verb = Scripted(pyetcd.exceptions.PreconditionFailedError())
    with pytest.raises(CniError) as err:
        etcd_call(verb)(_store(3))
    assert err.value.code == Code.STORE_FAILURE and verb.calls == 1
