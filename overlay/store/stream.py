"""One etcd watch stream, spoken directly: create, responses, progress requests.

pyetcd's watcher hands events over one at a time and cannot ask etcd for progress. We need
both: every event of one etcd response (a transaction, a DeleteRange, the keys of a revoked
lease share one revision) must reach the consumer together, and a stream that has silently
stopped delivering (seen when the etcd member it was attached to stopped) must be noticed
without reading the prefix again. etcd answers a progress request on a live stream at once, so
a stream that stays silent after one is dead, whatever the TCP connection says.

Responses are read by a thread of the stream as fast as etcd sends them; `batches()` hands out
everything that has arrived since the last call as one list. A burst of single-key puts (one
revision, one response each) therefore reaches the consumer as a few large batches while it is
busy with the previous one, instead of one flow bundle per put.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

from pyetcd import etcdrpc
from pyetcd.utils import prefix_range_end

_DELETE = 1  # mvccpb.Event.EventType


class Change(NamedTuple):
    key: str
    value: bytes | None  # None: the key was deleted
    mod_revision: int
    # The key's creation revision (0 for a delete): who claimed an address first
    # (overlay/agent/claims.py). etcd sends it with every event at no extra cost.
    create_revision: int = 0


class Compacted(Exception):
    """etcd no longer has the history the watch asked for."""


class StreamEnded(Exception):
    """etcd cancelled the watch (or the stream closed without an error)."""


class WatchStream:
    def __init__(self, *, channel: Any, prefix: str, start_revision: int) -> None:
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        key = prefix.encode()
        self._requests.put(etcdrpc.WatchRequest(create_request=etcdrpc.WatchCreateRequest(
            key=key, range_end=prefix_range_end(key), start_revision=start_revision)))
        self._call = etcdrpc.WatchStub(channel).Watch(iter(self._requests.get, None))
        self.last_heard = time.monotonic()
        # Each item: the changes of one response, or the exception that ended the stream.
        self._arrived: queue.SimpleQueue[list[Change] | Exception] = queue.SimpleQueue()
        threading.Thread(target=self._read, name=f"stream {prefix}", daemon=True).start()

    def _read(self) -> None:
        try:
            for resp in self._call:
                self.last_heard = time.monotonic()
                if resp.compact_revision:
                    raise Compacted(f"compacted at revision {resp.compact_revision}")
                if resp.canceled:
                    raise StreamEnded(resp.cancel_reason or "watch cancelled by etcd")
                if resp.events:
                    self._arrived.put([Change(ev.kv.key.decode(errors="replace"),
                                              None if ev.type == _DELETE else ev.kv.value,
                                              ev.kv.mod_revision, ev.kv.create_revision)
                                       for ev in resp.events])
            raise StreamEnded("watch stream closed")
        except Exception as exc:  # handed to the consumer, which decides what it means
            self._arrived.put(exc)

    def batches(self) -> Iterator[list[Change]]:
        """Everything that arrived since the last batch, in order. Raises Compacted,
        StreamEnded or grpc.RpcError (etcd unreachable, or `close()` was called)."""
        while True:
            batch: list[Change] = []
            item = self._arrived.get()
            while True:
                if isinstance(item, Exception):
                    if batch:  # deliver what came before the end first
                        yield batch
                    raise item
                batch += item
                try:
                    item = self._arrived.get_nowait()
                except queue.Empty:
                    break
            yield batch

    def request_progress(self) -> None:
        self._requests.put(etcdrpc.WatchRequest(progress_request=etcdrpc.WatchProgressRequest()))

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()
