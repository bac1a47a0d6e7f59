"""The `ovs` CNI plugin: forwards a runtime's call to the local overlay-agent and prints the answer.

Thin on purpose. It reads CNI_* from the environment and the netconf from stdin, sends both
unchanged over gRPC to the agent's unix socket (netconf field `agentSocket`, default
/run/overlay/agent.sock), and prints the result or error bytes the agent returns. It never
touches OVS, netlink or etcd. VERSION is answered locally, since it must work without an agent.
Transport failures map to CNI code 11 ("try again later"): the agent may just be restarting.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

DEFAULT_SOCKET = "/run/overlay/agent.sock"
# Mirrors overlay.cni.netconf.SUPPORTED_VERSIONS; a unit test keeps the two equal.
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
TIMEOUT_SECONDS = 120.0
TRY_AGAIN_LATER, DECODING_FAILURE, INVALID_ENV, INTERNAL = 11, 6, 4, 100


def _emit(body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


def _error(version: str, code: int, msg: str, details: str = "") -> int:
    body: dict[str, Any] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        body["details"] = details
    _emit(body)
    return 1


def run(environ: dict[str, str], stdin: bytes) -> int:
    command = environ.get("CNI_COMMAND", "")
    try:
        conf = json.loads(stdin) if stdin.strip() else {}
    except ValueError as exc:
        conf, bad_json = {}, str(exc)
    else:
        bad_json = "" if isinstance(conf, dict) else "netconf must be a JSON object"
        conf = conf if isinstance(conf, dict) else {}
    version = conf.get("cniVersion") if isinstance(conf.get("cniVersion"), str) else "1.0.0"

    if command == "VERSION":
        _emit({"cniVersion": version if version in SUPPORTED_VERSIONS else "1.1.0",
               "supportedVersions": list(SUPPORTED_VERSIONS)})
        return 0
    if command not in ("ADD", "DEL", "CHECK"):
        return _error(version, INVALID_ENV,
                      f"CNI_COMMAND must be ADD, DEL, CHECK or VERSION, got {command!r}")
    if bad_json:
        return _error(version, DECODING_FAILURE, "netconf on stdin is not valid JSON", bad_json)

    socket_path = conf.get("agentSocket") or DEFAULT_SOCKET
    import grpc  # deferred: VERSION and early errors should not pay for it

    from overlay.cni.v1 import cni_pb2, cni_pb2_grpc

    request = cni_pb2.CniRequest(
        env={k: v for k, v in environ.items() if k.startswith("CNI_")}, netconf=stdin)
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            method = {"ADD": "Add", "DEL": "Del", "CHECK": "Check"}[command]
            reply = getattr(cni_pb2_grpc.CniStub(channel), method)(request,
                                                                   timeout=TIMEOUT_SECONDS)
    except grpc.RpcError as exc:
        code = exc.code() if hasattr(exc, "code") else None
        return _error(version, TRY_AGAIN_LATER,
                      f"cannot reach overlay-agent at {socket_path}: is it running, and are "
                      f"you root?", f"{code}: {exc.details() if hasattr(exc, 'details') else exc}")
    if reply.WhichOneof("outcome") == "error":
        return _error(version, reply.error.code, reply.error.msg, reply.error.details)
    if reply.result:
        sys.stdout.buffer.write(reply.result + b"\n")
        sys.stdout.flush()
    return 0


def main() -> int:
    try:
        return run(dict(os.environ), sys.stdin.buffer.read())
    except Exception as exc:  # a plugin must answer in CNI's format, never with a traceback
        return _error("1.0.0", INTERNAL, "the ovs CNI plugin failed", f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    raise SystemExit(main())
