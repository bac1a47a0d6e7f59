"""The plugin's hand-made gRPC client and protobuf codec against the real grpcio and protobuf."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from cni_server import serving

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
    with serving(Echo(), os.path.join(tmp_path, "s.sock")) as path:
        yield path


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


# --- headers.py: HPACK against the hpack package's encoder -----------------------------------

def test_hpack_decoder_reads_huffman_indexed_and_evicted_headers() -> None:
    import hpack

    from overlay_plugin_ovs.headers import Decoder, encode, huffman_decode

    blocks = [
        [(":status", "200"), ("content-type", "application/grpc"),
         ("grpc-accept-encoding", "identity,deflate,gzip")],
        [("grpc-status", "0"), ("grpc-message", "all is well: ünïcode, %20 and \x7f")],
        [(":status", "200"), ("content-type", "application/grpc"), ("x-long", "v" * 300)],
        [("grpc-status", "13"), ("grpc-message", "".join(chr(c) for c in range(32, 127)))],
    ]
    for huffman in (True, False):
        encoder, decoder = hpack.Encoder(), Decoder()
        encoder.header_table_size = 256  # small: entries are evicted along the way
        for headers in blocks * 3:
            assert decoder.decode(encoder.encode(headers, huffman=huffman)) == headers
    for text in ("", "a", "grpc-status", "\x00\xff" * 5):
        assert huffman_decode(hpack.huffman.HuffmanEncoder(
            hpack.huffman_constants.REQUEST_CODES,
            hpack.huffman_constants.REQUEST_CODES_LENGTH).encode(text.encode("latin-1"))) == \
            text.encode("latin-1")
    # what we send, hpack reads
    request = [(":method", "POST"), (":path", "/overlay.cni.v1.Cni/Add"), ("x", "y" * 200)]
    assert hpack.Decoder().decode(encode(request)) == request


# --- jsontext.py: json's answers without json ------------------------------------------------

def test_jsontext_parses_and_fails_as_json_does() -> None:
    import json

    from overlay_plugin_ovs import jsontext

    for text in [b'{"cniVersion": "1.0.0", "name": "n", "x": [1, 2.5, -3e2, true, null]}',
                 b' \n{"a": "\\u00e9\\ud83d\\ude00"} \t', '{"é": "ü"}'.encode(),
                 b"[]", b'"s"', b"NaN", b'\xef\xbb\xbf{"bom": 1}', '{"u16": 1}'.encode("utf-16")]:
        assert repr(jsontext.loads(text)) == repr(json.loads(text))
    for bad in [b"{", b'{"a": 1} x', b"{'a': 1}", b"\xff\xfe\x00", b"[" * 100_000]:
        try:
            json.loads(bad)
        except (ValueError, RecursionError) as exc:
            expected = f"{type(exc).__name__}: {exc}"
        try:
            jsontext.loads(bad)
        except (ValueError, RecursionError) as exc:
            assert f"{type(exc).__name__}: {exc}" == expected
        else:
            raise AssertionError(f"{bad!r} parsed")
    for value in [{"cniVersion": "1.0.0", "code": 7, "msg": "naïve \"quote\"\n", "d": None},
                  {"supportedVersions": ["0.1.0", "1.1.0"], "ok": True, "no": False}]:
        assert jsontext.dumps(value) == json.dumps(value)


def test_the_plugin_starts_without_heavy_modules() -> None:
    """Start-up is most of the plugin's cost: it must not import what it does without."""
    import subprocess
    import sys

    from overlay_plugin_ovs import launcher

    code = ("import sys\n" + launcher.script(sys.executable).split("\n", 3)[3]
            .replace("main_and_exit()", "print(' '.join(sorted(sys.modules)))"))
    loaded = set(subprocess.run([sys.executable, "-IS", "-c", code], capture_output=True,
                                text=True, check=True).stdout.split())
    assert "overlay_plugin_ovs.wire" in loaded
    heavy = {"json", "re", "enum", "typing", "socket", "dataclasses", "hpack", "logging",
             "site", "pathlib", "inspect", "selectors", "os", "struct", "_collections_abc"}
    assert not heavy & loaded, heavy & loaded


def test_the_started_plugin_reports_bad_json_as_code_6(tmp_path: Any) -> None:
    """In a fresh interpreter json is not imported: a syntax error must still be code 6."""
    import json
    import subprocess
    import sys

    from overlay_plugin_ovs import launcher

    plugin = tmp_path / "ovs"
    plugin.write_text(launcher.script(sys.executable))
    plugin.chmod(0o755)
    for stdin, code in ((b'{"cniVersion": "1.0.0", "type": "ovs", ', 6), (b"[1, 2", 6),
                        (b'{"cniVersion": "9.9.9"}', 1)):
        out = subprocess.run([str(plugin)], input=stdin, capture_output=True,
                             env={"CNI_COMMAND": "ADD"})
        assert out.returncode == 1 and not out.stderr, out
        assert json.loads(out.stdout)["code"] == code, out.stdout
