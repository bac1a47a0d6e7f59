"""The plugin's own behaviour: answered locally or mapped from transport failures."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from overlay.cni.netconf import SUPPORTED_VERSIONS
from overlay_plugin_ovs import launcher
from overlay_plugin_ovs import main as plugin


def run(capsys: pytest.CaptureFixture[str], env: dict[str, str], stdin: bytes) -> tuple[int, dict]:
    rc = plugin.run(env, stdin)
    return rc, json.loads(capsys.readouterr().out)


def test_version_is_answered_without_an_agent(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "0.4.0"}')
    assert rc == 0
    assert out == {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_plugin_and_agent_agree_on_versions() -> None:
    assert plugin.SUPPORTED_VERSIONS == SUPPORTED_VERSIONS


def test_malformed_json_is_code_6(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out = run(capsys, {"CNI_COMMAND": "ADD"}, b"{nope")
    assert rc == 1 and out["code"] == 6 and "not valid JSON" in out["msg"]


def test_unreachable_agent_is_try_again_later(capsys: pytest.CaptureFixture[str],
                                              tmp_path: object) -> None:
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "ovs", "vxlanID": 42,
            "agentSocket": f"{tmp_path}/no-agent.sock", "ipam": {"subnet": "10.0.0.0/24"}}
    rc, out = run(capsys, {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_IFNAME": "eth0",
                           "CNI_NETNS": "/proc/self/ns/net"}, json.dumps(conf).encode())
    assert rc == 1 and out["code"] == 11
    assert "no-agent.sock" in out["msg"] and out["cniVersion"] == "1.0.0"


ADD_ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "x", "CNI_IFNAME": "eth0",
           "CNI_NETNS": "/proc/self/ns/net"}


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK", "STATUS", "GC"])
def test_unsupported_version_is_code_1_without_an_agent(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: object, command: str) -> None:
    conf = {"cniVersion": "9.9.9", "name": "n", "type": "ovs", "vxlanID": 42,
            "agentSocket": f"{tmp_path}/no-agent.sock", "ipam": {"subnet": "10.0.0.0/24"}}
    rc, out = run(capsys, {**ADD_ENV, "CNI_COMMAND": command}, json.dumps(conf).encode())
    assert rc == 1 and out["code"] == 1, out
    assert "9.9.9" in out["msg"] and "1.1.0" in out["details"]
    assert out["cniVersion"] == SUPPORTED_VERSIONS[-1]  # a version the runtime can parse


def test_version_with_an_unsupported_version_still_lists_ours(
        capsys: pytest.CaptureFixture[str]) -> None:
    # As the reference plugins' skel does: VERSION is how a runtime finds out what we speak.
    rc, out = run(capsys, {"CNI_COMMAND": "VERSION"}, b'{"cniVersion": "9.9.9"}')
    assert rc == 0
    assert out == {"cniVersion": "1.1.0", "supportedVersions": list(SUPPORTED_VERSIONS)}


def test_the_launcher_prints_its_answer_before_it_exits(tmp_path: Path) -> None:
    """The launcher leaves with os._exit (no interpreter teardown): what it printed into a
    pipe must still reach the runtime, with exit status 0 (errors: test_plugin_wire.py)."""
    exe = tmp_path / "ovs"
    exe.write_text(launcher.script(sys.executable))
    exe.chmod(0o755)
    proc = subprocess.run([str(exe)], input=b'{"cniVersion": "1.0.0"}', capture_output=True,
                          timeout=30, env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0 and proc.stderr == b"", proc
    assert json.loads(proc.stdout)["supportedVersions"] == list(SUPPORTED_VERSIONS)
