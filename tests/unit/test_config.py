from pathlib import Path

import pytest

from overlay.agent.config import load


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
