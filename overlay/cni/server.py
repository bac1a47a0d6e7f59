"""The agent's gRPC endpoint: a unix socket that only root can open.

Translates between the wire (overlay.cni.v1) and CniService. Nothing leaves this module as a
traceback: a CniError becomes the CNI error object the plugin prints; anything else is logged
with its traceback here and reported as code 100 with the exception's text.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc

from overlay.cni.netconf import CniEnv, NetConf, parse_env, parse_netconf
from overlay.cni.service import CniService
from overlay.cni.v1 import cni_pb2, cni_pb2_grpc
from overlay.errors import CniError, Code

log = logging.getLogger(__name__)

Handler = Callable[[CniEnv, NetConf], bytes]
# Told of every call served: (command, CNI error code or 0 for success, seconds). The agent
# passes its metrics' cni_request; this module does not know who listens.
OnRequest = Callable[[str, int, float], None]


class CniServicer(cni_pb2_grpc.CniServicer):
    def __init__(self, *, service: CniService,
                 info: Callable[[], cni_pb2.AgentInfoReply],
                 doctor: Callable[[], list[str]],
                 on_request: OnRequest | None = None,
                 problems: Callable[[], list[str]] = list) -> None:
        self._service = service
        self._doctor = doctor  # this host's OVS, kernel and etcd compared (agent/doctor.py)
        self._problems = problems  # the agent's own findings (conflicting etcd records, ...)
        self._info = info
        self._on_request = on_request

    def _call(self, command: str, request: Any, handler: Handler) -> Any:
        started = time.perf_counter()
        reply = self._reply(command, request, handler)
        if self._on_request is not None:  # every command, every outcome: code 0 is success
            code = reply.error.code if reply.HasField("error") else 0
            self._on_request(command, int(code), time.perf_counter() - started)
        return reply

    def _reply(self, command: str, request: Any, handler: Handler) -> Any:
        env_vars = dict(request.env)
        env_vars["CNI_COMMAND"] = command
        try:
            env = parse_env(env_vars)
            conf = parse_netconf(request.netconf)
            return cni_pb2.CniReply(result=handler(env, conf))
        except CniError as err:
            log.info("%s %s failed: %s", command, env_vars.get("CNI_CONTAINERID", "?"), err)
            return cni_pb2.CniReply(error=cni_pb2.CniError(
                code=int(err.code), msg=err.msg, details=err.details))  # type: ignore[arg-type]
        except Exception as exc:
            log.exception("%s failed unexpectedly", command)
            return cni_pb2.CniReply(error=cni_pb2.CniError(
                code=int(Code.INTERNAL), msg=f"overlay-agent failed during {command}",  # type: ignore[arg-type]
                details=f"{type(exc).__name__}: {exc}"))

    def Add(self, request: Any, context: Any) -> Any:  # noqa: N802 (gRPC method names)
        return self._call("ADD", request, self._service.add)

    def Del(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._call("DEL", request, self._service.delete)

    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._call("CHECK", request, self._service.check)

    def Status(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._call("STATUS", request, self._service.status)

    def Gc(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._call("GC", request, self._service.gc)

    def AgentInfo(self, request: Any, context: Any) -> Any:  # noqa: N802
        return self._info()

    def Doctor(self, request: Any, context: Any) -> Any:  # noqa: N802
        try:
            problems = self._doctor()
        except CniError as err:
            problems = [f"the check itself failed: {err}"]
        problems += self._problems()
        return cni_pb2.DoctorReply(host=self._service.host.name, problems=problems)


def serve(*, socket_path: str, servicer: CniServicer, workers: int = 16) -> grpc.Server:
    """Start serving on `socket_path` (mode 0600, in a 0700 directory)."""
    os.makedirs(os.path.dirname(socket_path), mode=0o700, exist_ok=True)
    if os.path.exists(socket_path):
        os.unlink(socket_path)  # left over from an agent that did not stop cleanly
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="cni"))
    cni_pb2_grpc.add_CniServicer_to_server(servicer, server)
    old = os.umask(0o177)  # the socket is born 0600: no window where others could connect
    try:
        server.add_insecure_port(f"unix:{socket_path}")
        server.start()
    finally:
        os.umask(old)
    os.chmod(socket_path, 0o600)
    return server
