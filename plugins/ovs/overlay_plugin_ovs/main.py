"""The `ovs` CNI plugin: forwards a runtime's call to the local overlay-agent and prints the answer.

Thin on purpose. It reads CNI_* from the environment and the netconf from stdin, sends both
unchanged over gRPC to the agent's unix socket (netconf field `agentSocket`, default
/run/overlay/agent.sock), and prints the result or error bytes the agent returns. It never
touches OVS, netlink or etcd. What it can decide alone it answers alone, agent or no agent:
VERSION, an unknown CNI_COMMAND, a netconf that is not JSON, and a cniVersion we do not speak
(code 1, as the spec says, rather than 11 from a failed attempt to reach the agent).
Transport failures map to CNI code 11 ("try again later"): the agent may just be restarting.
The gRPC call itself goes through a small client of our own (wire.py): start-up time matters,
so the plugin imports nothing beyond the interpreter's C modules, not even `os` (launcher.py
starts it without `site`; see docs/architecture.md, "The plugin's gRPC client").
"""

from __future__ import annotations

import posix  # os without importing os.py (and _collections_abc): ~1 ms of CPU a call
import sys

from overlay_plugin_ovs import jsontext
from overlay_plugin_ovs.messages import decode_reply, encode_request
from overlay_plugin_ovs.wire import RpcFailure, unary_call

TYPE_CHECKING = False  # typing costs start-up; mypy treats this name as True
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/run/overlay/agent.sock"
# Mirrors overlay.cni.netconf.SUPPORTED_VERSIONS; a unit test keeps the two equal.
SUPPORTED_VERSIONS = ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
TIMEOUT_SECONDS = 120.0
INCOMPATIBLE_VERSION, TRY_AGAIN_LATER, DECODING_FAILURE, INVALID_ENV, INVALID_NETCONF = 1, 11, 6, 4, 7
NOT_AVAILABLE, INTERNAL = 50, 100
METHODS = {"ADD": "Add", "DEL": "Del", "CHECK": "Check", "STATUS": "Status", "GC": "Gc"}


def _emit(body: dict[str, Any]) -> None:
    sys.stdout.write(jsontext.dumps(body) + "\n")
    sys.stdout.flush()


def _error(version: str, code: int, msg: str, details: str = "") -> int:
    body: dict[str, Any] = {"cniVersion": version, "code": code, "msg": msg}
    if details:
        body["details"] = details
    _emit(body)
    return 1


def _utf8(text: str) -> bool:
    try:
        text.encode()
        return True
    except UnicodeEncodeError:  # lone surrogates: bytes the OS gave us that are not UTF-8
        return False


def _usable_path(value: object) -> bool:
    return (isinstance(value, str) and value.startswith("/") and "\0" not in value
            and _utf8(value))


def run(environ: dict[str, str], stdin: bytes) -> int:
    command = environ.get("CNI_COMMAND", "")
    try:
        conf = jsontext.loads(stdin) if stdin.strip() else {}
    except (ValueError, RecursionError) as exc:  # RecursionError: "[[[[..." nested too deep
        conf, bad_json = {}, str(exc) or type(exc).__name__
    else:
        bad_json = "" if isinstance(conf, dict) else "netconf must be a JSON object"
        conf = conf if isinstance(conf, dict) else {}
    if not stdin.strip() and command != "VERSION":
        bad_json = "stdin is empty; the runtime must pass the network configuration"
    given = conf.get("cniVersion")
    version = given if isinstance(given, str) and given.isprintable() and given else "0.1.0"

    if command == "VERSION":
        _emit({"cniVersion": given if given in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1],
               "supportedVersions": list(SUPPORTED_VERSIONS)})
        return 0
    if command not in METHODS:
        return _error(version, INVALID_ENV,
                      f"CNI_COMMAND must be one of {', '.join(METHODS)} or VERSION, got {command!r}")
    if bad_json:
        return _error(version, DECODING_FAILURE, "netconf on stdin is not valid JSON", bad_json)
    if version not in SUPPORTED_VERSIONS:
        # Answered in a version the runtime can read: ours, not the one we do not speak.
        return _error(SUPPORTED_VERSIONS[-1], INCOMPATIBLE_VERSION,
                      f"incompatible CNI version: the netconf says {version!r}",
                      f"the ovs plugin supports {', '.join(SUPPORTED_VERSIONS)}")

    socket_path = conf.get("agentSocket", DEFAULT_SOCKET)
    if not _usable_path(socket_path):
        return _error(version, INVALID_NETCONF,
                      f"agentSocket must be an absolute path, got {socket_path!r}")
    env = {k: v for k, v in environ.items() if k.startswith("CNI_")}
    for key, value in env.items():
        if not _utf8(value):
            return _error(version, INVALID_ENV, f"{key} is not valid UTF-8: {value!r}")
    method = "/overlay.cni.v1.Cni/" + METHODS[command]
    try:
        reply = decode_reply(unary_call(socket_path, method, encode_request(env, stdin),
                                        TIMEOUT_SECONDS))
    except RpcFailure as exc:
        # STATUS asks "can you serve ADD?": without an agent, no (50). Anything else may
        # simply be early, the agent restarting: try again later (11).
        return _error(version, NOT_AVAILABLE if command == "STATUS" else TRY_AGAIN_LATER,
                      f"cannot reach overlay-agent at {socket_path}: is it running, and are "
                      f"you root?", f"{exc.status}: {exc.message}")
    if reply.is_error:
        return _error(version, reply.code, reply.msg, reply.details)
    if reply.result:
        sys.stdout.buffer.write(reply.result + b"\n")
        sys.stdout.flush()
    return 0


def _environ() -> dict[str, str]:
    """os.environ, as os.py decodes it: the file system encoding, surrogateescape for bytes
    that are not in it (run() reports those as not UTF-8)."""
    encoding, errors = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()
    return {k.decode(encoding, errors): v.decode(encoding, errors)
            for k, v in posix.environ.items()}


def main() -> int:
    try:
        return run(_environ(), sys.stdin.buffer.read())
    except Exception as exc:  # a plugin must answer in CNI's format, never with a traceback
        return _error("1.0.0", INTERNAL, "the ovs CNI plugin failed", f"{type(exc).__name__}: {exc}")


def main_and_exit() -> None:
    """main(), then leave at once: the launcher's entry. The answer is printed and flushed by
    then, and the process owns nothing else to release, so the interpreter's teardown (module
    and object finalisation, 3-4 ms of every call on a loaded 2-core machine) is skipped."""
    code = main()
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # the runtime closed our stdout: nothing more to tell it
        code = code or 1
    posix._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
