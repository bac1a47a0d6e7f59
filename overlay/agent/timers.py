"""Timers the reconciler schedules (host_grace expiries); a Protocol so tests can step time."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol


class Cancellable(Protocol):
    def cancel(self) -> None: ...


def start_timer(delay: float, call: Callable[[], None]) -> Cancellable:
    timer = threading.Timer(delay, call)
    timer.daemon = True
    timer.start()
    return timer
