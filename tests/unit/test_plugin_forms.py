"""The two forms of the `ovs` plugin give the same answers: the compiled one (plugins/ovs/go,
built by `make deps` into the venv) and the Python one (overlay_plugin_ovs, run by its
launcher). Both run as a runtime runs them, as processes, on the same inputs: the answers the
plugin gives alone (no agent), and whole calls against a real grpcio server speaking the
agent's service."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cni_server import serving

from overlay.cni.v1 import cni_pb2, cni_pb2_grpc
from overlay.install import plugin as plugins
from overlay_plugin_ovs import launcher
from overlay_plugin_ovs.main import SUPPORTED_VERSIONS

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(scope="module")
def forms(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    compiled = plugins.compiled(sys.prefix)
    if compiled is None:
        pytest.skip(f"the compiled plugin is not built in {sys.prefix}/bin (make deps builds it; "
                    "apt: golang-go golang-golang-x-net-dev golang-google-protobuf-dev)")
    python = tmp_path_factory.mktemp("plugin") / "ovs"
    python.write_text(launcher.script(sys.executable))
    python.chmod(0o755)
    return {"compiled": str(compiled), "python": str(python)}


def call(plugin: str, env: dict[str, str], stdin: bytes) -> tuple[int, Any]:
    proc = subprocess.run([plugin], input=stdin, capture_output=True, timeout=30,
                          env={"PATH": PATH, **env})
    assert proc.stderr == b"", proc.stderr  # a runtime shows stderr to nobody: all goes to stdout
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None


def both(forms: dict[str, str], env: dict[str, str], stdin: bytes,
         ignore: tuple[str, ...] = ()) -> tuple[int, Any]:
    """The two forms' (exit status, answer), which must be equal but for the `ignore` keys."""
    answers = {}
    for name, plugin in forms.items():
        rc, body = call(plugin, env, stdin)
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in ignore}
        answers[name] = (rc, body)
    assert answers["compiled"] == answers["python"], answers
    return answers["compiled"]


# (CNI_COMMAND, stdin, the code the plugin answers with alone: None for success)
LOCAL = [
    ("VERSION", b'{"cniVersion": "1.0.0"}', None),
    ("VERSION", b'{"cniVersion": "9.9.9"}', None),
    ("VERSION", b"", None),
    ("ADD", b'{"cniVersion": "1.0.0", "type": "ovs", ', 6),
    ("ADD", b"[1, 2]", 6),
    ("ADD", b"null", 6),
    ("ADD", b'"a string"', 6),
    ("ADD", b"", 6),
    ("ADD", b"   \n", 6),
    ("ADD", b'{"cniVersion": "1.0.0"} {}', 6),
    ("ADD", b'{"cniVersion": "1.0.0", "x": "\xff\xfe"}', 6),
    ("ADD", b"[" * 100_000, 6),
    ("ADD", b'{"cniVersion": "9.9.9"}', 1),
    ("DEL", b'{"cniVersion": 1}', 1),  # not a string: read as 0.1.0, which is ours
    ("ADD", b'{"cniVersion": "1.0.0", "agentSocket": "relative.sock"}', 7),
    ("ADD", b'{"cniVersion": "1.0.0", "agentSocket": 5}', 7),
    ("ADD", b'{"cniVersion": "1.0.0", "agentSocket": "/a\\u0000b"}', 7),
    ("VERSION", b'{"cniVersion": "1.0\\ud800"}', None),
    ("FROB", b'{"cniVersion": "1.0.0"}', 4),
    ("", b'{"cniVersion": "1.0.0"}', 4),
]


@pytest.mark.parametrize("command,stdin,code", LOCAL, ids=[f"{c or 'none'}-{i}" for i, (c, _, _)
                                                           in enumerate(LOCAL)])
def test_what_the_plugin_answers_alone(forms: dict[str, str], command: str, stdin: bytes,
                                       code: int | None) -> None:
    # A JSON parser's own words for a syntax error are its own: the code and msg must agree.
    rc, body = both(forms, {"CNI_COMMAND": command}, stdin, ignore=("details",))
    if code is None:
        assert rc == 0 and body["supportedVersions"] == list(SUPPORTED_VERSIONS)
    elif command == "DEL" and code == 1:  # cniVersion 1 is no string: 0.1.0, then the agent
        assert rc == 1 and body["code"] == 11 and body["cniVersion"] == "0.1.0", body
    else:
        assert rc == 1 and body["code"] == code, body


@pytest.mark.parametrize("socket_path", [b"/run/\\udc80.sock", b"/run/\\uFFFD\xef\xbf\xbd\\udc80",
                                         b"/run/\\ud800\\\\ufffd"])
def test_a_lone_surrogate_is_no_path(forms: dict[str, str], socket_path: bytes) -> None:
    """An escaped lone UTF-16 surrogate: Python keeps it (no UTF-8 can carry it), Go's decoder
    makes it U+FFFD. Either way it names no file: code 7 from both (the messages show the
    character each could hold)."""
    stdin = b'{"cniVersion": "1.0.0", "agentSocket": "' + socket_path + b'"}'
    for name, plugin in forms.items():
        rc, body = call(plugin, {"CNI_COMMAND": "ADD"}, stdin)
        assert rc == 1 and body["code"] == 7, (name, body)


def test_an_env_value_that_is_not_utf8_is_code_4(forms: dict[str, str], tmp_path: Path) -> None:
    for name, plugin in forms.items():
        proc = subprocess.run([plugin], input=b'{"cniVersion": "1.0.0"}', capture_output=True,
                              timeout=30, env={b"PATH": PATH.encode(), b"CNI_COMMAND": b"ADD",
                                               b"CNI_NETNS": b"/var/run/netns/\xff"})
        assert proc.returncode == 1 and json.loads(proc.stdout)["code"] == 4, (name, proc)


def test_no_agent_is_try_again_later_and_status_not_available(forms: dict[str, str],
                                                              tmp_path: Path) -> None:
    conf = json.dumps({"cniVersion": "1.0.0", "agentSocket": str(tmp_path / "none.sock")})
    rc, body = both(forms, {"CNI_COMMAND": "ADD"}, conf.encode(), ignore=("details",))
    assert rc == 1 and body["code"] == 11 and str(tmp_path) in body["msg"]
    rc, body = both(forms, {"CNI_COMMAND": "STATUS"}, conf.encode(), ignore=("details",))
    assert rc == 1 and body["code"] == 50


class Agent(cni_pb2_grpc.CniServicer):
    """The agent's service, answering from the request: Add echoes what it was sent, Check
    answers with a CNI error, Del fails the RPC itself, Gc answers with nothing."""

    def Add(self, request: Any, context: Any) -> Any:  # noqa: N802
        sent = {"env": dict(request.env), "netconf_bytes": len(request.netconf),
                "netconf_tail": request.netconf[-20:].decode()}
        return cni_pb2.CniReply(result=json.dumps(sent, sort_keys=True).encode())

    def Check(self, request: Any, context: Any) -> Any:  # noqa: N802
        return cni_pb2.CniReply(error=cni_pb2.CniError(
            code=cni_pb2.CHECK_FAILED, msg="veth gone: <x> & \"y\"", details="naïve ✓"))

    def Del(self, request: Any, context: Any) -> Any:  # noqa: N802
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nope")

    def Gc(self, request: Any, context: Any) -> Any:  # noqa: N802
        return cni_pb2.CniReply(result=b"")


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[str]:
    with serving(Agent(), str(tmp_path / "agent.sock")) as path:
        yield path


def test_a_call_reaches_the_agent_whole(forms: dict[str, str], agent: str) -> None:
    # Larger than an HTTP/2 frame and the initial window; the env's non-CNI_ names stay home.
    conf = {"cniVersion": "1.0.0", "agentSocket": agent, "pad": "x" * 100_000, "end": "é"}
    stdin = json.dumps(conf).encode()
    env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c" * 64, "CNI_IFNAME": "eth0",
           "CNI_ARGS": "K8S_POD_NAME=p;é=ü", "HOME": "/root"}
    rc, body = both(forms, env, stdin)
    assert rc == 0
    assert body == {"env": {k: v for k, v in env.items() if k.startswith("CNI_")},
                    "netconf_bytes": len(stdin), "netconf_tail": stdin[-20:].decode()}


def test_the_agents_errors_come_through_as_cni_errors(forms: dict[str, str], agent: str) -> None:
    stdin = json.dumps({"cniVersion": "0.4.0", "agentSocket": agent}).encode()
    rc, body = both(forms, {"CNI_COMMAND": "CHECK"}, stdin)
    assert (rc, body) == (1, {"cniVersion": "0.4.0", "code": 106,
                              "msg": "veth gone: <x> & \"y\"", "details": "naïve ✓"})
    # A failed RPC: the compiled form names the status (FAILED_PRECONDITION), the Python one
    # its number (grpc-status 9); both carry the agent's message.
    for plugin in forms.values():
        rc, body = call(plugin, {"CNI_COMMAND": "DEL"}, stdin)
        assert rc == 1 and body["code"] == 11 and "nope" in body["details"], body
    rc, body = both(forms, {"CNI_COMMAND": "GC"}, stdin)
    assert (rc, body) == (0, None)


def test_the_compiled_plugin_is_what_the_lab_and_the_installer_use(forms: dict[str, str],
                                                                    tmp_path: Path) -> None:
    from overlay.lab.host import install_plugin

    installed = install_plugin(str(tmp_path / "bin"))
    assert Path(installed).read_bytes() == Path(forms["compiled"]).read_bytes()
    os.environ[plugins.FORM_ENV] = "python"
    try:
        assert Path(install_plugin(str(tmp_path / "bin"))).read_text().startswith("#!")
    finally:
        del os.environ[plugins.FORM_ENV]
