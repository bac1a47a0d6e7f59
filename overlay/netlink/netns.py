"""Doing work inside another network namespace without moving any thread that serves others.

setns(2) changes the namespace of the calling OS thread only. run_in_netns() starts a fresh
thread, moves it into the target namespace, runs the function there (netlink sockets it opens
belong to that namespace) and lets the thread end, so the agent's own threads never change
namespace. We do not use pyroute2's netns= helper: it forks, and forking a process that runs
gRPC threads crashes the child.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def run_in_netns(path: str, fn: Callable[[], T]) -> T:
    outcome: list[T] = []
    failure: list[BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"cannot enter network namespace {path}: "
                                       f"{os.strerror(err)}")
            finally:
                os.close(fd)
            outcome.append(fn())
        except BaseException as exc:  # handed to the caller's thread below
            failure.append(exc)

    thread = threading.Thread(target=worker, name=f"netns:{os.path.basename(path)}")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
