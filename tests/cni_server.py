"""A real grpcio server of the agent's CNI service on a unix socket, answering with a servicer
a test writes: what the plugin's gRPC clients (tests/unit/test_plugin_wire.py,
test_plugin_forms.py) are held to, without an agent behind it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from typing import Any

import grpc

from overlay.cni.v1 import cni_pb2_grpc


@contextmanager
def serving(servicer: Any, socket_path: str) -> Iterator[str]:
    """Serve `servicer` (a cni_pb2_grpc.CniServicer) on `socket_path` until the block ends."""
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    cni_pb2_grpc.add_CniServicer_to_server(servicer, srv)
    srv.add_insecure_port(f"unix:{socket_path}")
    srv.start()
    try:
        yield socket_path
    finally:
        srv.stop(None)
