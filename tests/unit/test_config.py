import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from overlay.agent.config import load
from overlay.agent.logs import JsonFormatter


def test_file_then_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text('host = "n1"\netcd_endpoints = ["http://10.9.9.9:2379"]\n'
                        'lease_ttl = 7\nsocket = "/tmp/a.sock"\n')
    cfg = load(["--config", str(cfg_file), "--socket", "/tmp/b.sock", "--etcd-endpoints",
                "http://a:1,http://b:2"])
    assert cfg.host == "n1" and cfg.lease_ttl == 7 and cfg.socket == "/tmp/b.sock"
    assert cfg.etcd_endpoints == ("http://a:1", "http://b:2")


def test_rundir_defaults_to_the_ovsdb_socket_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OVS_RUNDIR", raising=False)
    assert load(["--ovsdb", "unix:/x/y/db.sock"]).rundir == "/x/y"


def test_unknown_keys_and_bad_datapath_are_refused(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('colour = "blue"\n')
    with pytest.raises(SystemExit):
        load(["--config", str(bad)])
    with pytest.raises(SystemExit):
        load(["--datapath", "warp"])


def test_observability_keys_come_from_file_and_flags(tmp_path: Path) -> None:
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text('metrics_address = ":10390"\nlog_format = "json"\n')
    cfg = load(["--config", str(cfg_file), "--metrics-address", "127.0.0.1:9999"])
    assert cfg.metrics_address == "127.0.0.1:9999" and cfg.log_format == "json"
    assert load([]).metrics_address == ""  # off unless configured


def run_check(*argv: str) -> subprocess.CompletedProcess[str]:
    """The real entry point, as an operator runs it (fast: nothing starts)."""
    return subprocess.run([sys.executable, "-m", "overlay.agent.main", "--check-config", *argv],
                          capture_output=True, text=True, timeout=60)


def test_check_config_accepts_a_good_file_and_starts_nothing(tmp_path: Path) -> None:
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text('host = "n1"\nmetrics_address = "0.0.0.0:10390"\n'
                        f'socket = "{tmp_path}/agent.sock"\n')
    out = run_check("--config", str(cfg_file))
    assert out.returncode == 0, out.stderr
    assert "configuration OK: host n1" in out.stdout and "metrics 0.0.0.0:10390" in out.stdout
    assert not (tmp_path / "agent.sock").exists()


@pytest.mark.parametrize("content,message", [
    ('colour = "blue"\n', "unknown configuration keys: colour"),
    ('lease_ttl = "soon"\n', "lease_ttl: 'soon' is not a valid integer"),
    ('log_format = "xml"\n', "log_format must be one of text, json, not 'xml'"),
    ('metrics_address = "0.0.0.0:http"\n', "port 'http' is not a number"),
    ('host = "n1"\n[oops\n', "is not valid TOML"),
    ('etcd_ca = "/nonexistent/ca.crt"\netcd_endpoints = ["https://10.0.0.1:2379"]\n',
     "/nonexistent/ca.crt"),
])
def test_check_config_refuses_with_a_clear_message(tmp_path: Path, content: str,
                                                   message: str) -> None:
    cfg_file = tmp_path / "agent.toml"
    cfg_file.write_text(content)
    out = run_check("--config", str(cfg_file))
    assert out.returncode == 1
    assert "invalid configuration" in out.stderr and message in out.stderr, out.stderr


def test_check_config_of_a_missing_file() -> None:
    out = run_check("--config", "/nonexistent/agent.toml")
    assert out.returncode == 1 and "cannot read /nonexistent/agent.toml" in out.stderr


def test_json_logs_are_one_object_per_line() -> None:
    formatter = JsonFormatter()
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("overlay.agent", logging.WARNING, __file__, 1,
                                   "ADD %s failed", ("c1",), sys.exc_info())
    line = formatter.format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "warning" and obj["logger"] == "overlay.agent"
    assert obj["msg"] == "ADD c1 failed" and "ValueError: boom" in obj["exc"]
    assert obj["ts"].endswith("+00:00")
