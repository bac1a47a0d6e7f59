"""Reading a key range of etcd page by page, the next page in flight while one is handed over.

No response holds a whole prefix (a cluster's endpoints are tens of MB; etcd's request limit is
1.5 MiB and gRPC's receive limit 4 MB by default). A restarted agent reads 50,000 endpoint
records this way before its table can go in, and used to take turns with etcd: wait for a
page, parse it, ask for the next. Here the request for page N+1 goes out (on a helper thread:
the client is synchronous) as soon as page N has arrived, and page N is handed to `on_page`
(the watch parses it into the model) while etcd works on the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple


class Item(NamedTuple):
    key: str
    value: bytes
    mod_revision: int
    create_revision: int = 0


OnPage = Callable[[list[Item]], None]


def read_range(client: Any, start: bytes, end: bytes, page: int, *, one_revision: bool,
               on_page: OnPage | None = None) -> tuple[int, list[Item]]:
    """Every key in [start, end): (the revision of the first page, the items in key order).

    With `one_revision`, every later page is read at the first page's revision, so the result
    is one consistent snapshot (etcd refuses if it compacts that revision meanwhile: the
    caller starts over); without, each page is read at its own. Errors are the client's."""
    with ThreadPoolExecutor(1, thread_name_prefix="etcd-page") as ahead:
        resp = client.get_range_response(start, end, limit=page)
        revision = resp.header.revision
        pinned = {"revision": revision} if one_revision else {}
        items: list[Item] = []
        while True:
            more = bool(resp.more and resp.kvs)
            upcoming: Future[Any] | None = None
            if more:
                upcoming = ahead.submit(client.get_range_response, resp.kvs[-1].key + b"\0", end,
                                        limit=page, **pinned)
            batch = [Item(kv.key.decode(errors="replace"), kv.value, kv.mod_revision,
                          kv.create_revision)
                     for kv in resp.kvs]
            if on_page is not None:
                on_page(batch)
            items += batch
            if upcoming is None:
                return revision, items
            resp = upcoming.result()
