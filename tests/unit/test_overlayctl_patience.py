"""overlayctl keeps trying an etcd that does not answer, for a while (no etcd: scripted)."""

from __future__ import annotations

from typing import Any

import pytest

from overlay.cli import overlayctl
from overlay.errors import CniError, Code
from overlay.store.tls import TlsFiles


class FlakyStore:
    def __init__(self, failures: int) -> None:
        self.failures, self.calls, self.closed = failures, 0, False

    def tls_rejection(self) -> str | None:
        return None

    def close(self) -> None:
        self.closed = True

    def read(self) -> str:
        self.calls += 1
        if self.calls <= self.failures:
            raise CniError(Code.TRY_AGAIN_LATER, "etcd is not reachable; try again later")
        return "ok"


def use(store: Any) -> str:
    return str(store.read())


def test_a_lost_connection_attempt_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FlakyStore(failures=2)
    monkeypatch.setattr(overlayctl, "_store", lambda etcd, tls: store)
    monkeypatch.setattr(overlayctl.time, "sleep", lambda s: None)
    assert overlayctl._with_store("https://e:2379", TlsFiles(), use) == "ok"
    assert store.calls == 3 and store.closed


def test_an_etcd_that_stays_away_is_try_again_later(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FlakyStore(failures=10**6)
    monkeypatch.setattr(overlayctl, "_store", lambda etcd, tls: store)
    monkeypatch.setattr(overlayctl.time, "sleep", lambda s: None)
    with pytest.raises(CniError) as err:
        overlayctl._with_store("https://e:2379", TlsFiles(), use, patience=0.0)
    assert err.value.code is Code.TRY_AGAIN_LATER and store.calls == 1 and store.closed


def test_a_refusal_is_not_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    store = FlakyStore(failures=0)

    def refused(s: Any) -> str:
        s.calls += 1
        raise CniError(Code.STORE_FAILURE, "etcd refused the request")
    monkeypatch.setattr(overlayctl, "_store", lambda etcd, tls: store)
    with pytest.raises(CniError):
        overlayctl._with_store("https://e:2379", TlsFiles(), refused)
    assert store.calls == 1
