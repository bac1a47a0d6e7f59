"""The plugin's hand-made gRPC client and protobuf codec against the real grpcio and protobuf."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from overlay.cni.v1 import cni_pb2, cni_pb2_grpc
from overlay_plugin_ovs.messages import decode_reply, encode_request
from overlay_plugin_ovs.wire import RpcFailure, unary_call


def test_request_encoding_is_what_protobuf_reads() -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c" * 64, "CNI_ARGS": "IP=10.0.0.9;é=ü"}
    netconf = b'{"name": "n"}' * 50  # long enough for multi-byte lengths
    parsed = cni_pb2.CniRequest.FromString(encode_request(env, netconf))
    assert dict(parsed.env) == env and parsed.netconf == netconf


def test_reply_decoding_reads_what_protobuf_writes() -> None:
    ok = cni_pb2.CniReply(result=b'{"cniVersion": "1.0.0"}' * 20).SerializeToString()
    assert decode_reply(ok).result == b'{"cniVersion": "1.0.0"}' * 20
    err = cni_pb2.CniReply(error=cni_pb2.CniError(code=104, msg="no free address",
                                                  details="ranges: x")).SerializeToString()
    reply = decode_reply(err)
    assert (reply.is_error, reply.code, reply.msg, reply.details) == (True, 104,
                                                                       "no free address",
                                                                       "ranges: x")
    assert decode_reply(b"") == decode_reply(cni_pb2.CniReply().SerializeToString())


class Echo(cni_pb2_grpc.CniServicer):
    """Answers Add with the request's netconf; Del fails the RPC itself."""

    def Add(self, request: Any, context: Any) -> Any:  # noqa: N802
        return cni_pb2.CniReply(result=request.netconf + dict(request.env)["CNI_IFNAME"].encode())

    def Del(self, request: Any, context: Any) -> Any:  # noqa: N802
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope")


@pytest.fixture
def server(tmp_path: Any) -> Iterator[str]:
    path = os.path.join(tmp_path, "s.sock")
    srv = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    cni_pb2_grpc.add_CniServicer_to_server(Echo(), srv)
    srv.add_insecure_port(f"unix:{path}")
    srv.start()
    yield path
    srv.stop(None)


def test_unary_call_against_a_grpcio_server(server: str) -> None:
    big = b"x" * 100_000  # larger than one HTTP/2 frame and the initial window
    request = encode_request({"CNI_IFNAME": "eth0"}, big)
    for _ in range(3):  # fresh connection each time, as the plugin does
        reply = decode_reply(unary_call(server, "/overlay.cni.v1.Cni/Add", request, 5))
        assert reply.result == big + b"eth0"


def test_non_ok_status_and_missing_socket_are_failures(server: str, tmp_path: Any) -> None:
    with pytest.raises(RpcFailure) as info:
        unary_call(server, "/overlay.cni.v1.Cni/Del", encode_request({}, b"{}"), 5)
    assert "nope" in info.value.message
    with pytest.raises(RpcFailure) as info:
        unary_call(os.path.join(tmp_path, "none.sock"), "/overlay.cni.v1.Cni/Add", b"", 5)
    assert info.value.status == "UNAVAILABLE"
