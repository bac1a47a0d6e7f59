"""overlay-agent: parse the arguments, then build the agent (overlay/agent/agent.py), start it,
run it until SIGTERM or SIGINT, and stop it. --check-config only checks the configuration."""

from __future__ import annotations

import logging
import sys
import threading

from overlay.agent import config as agent_config
from overlay.agent import logs
from overlay.agent.agent import StartError, build
from overlay.store import tls as etcd_tls

log = logging.getLogger("overlay.agent")


def main(argv: list[str] | None = None) -> int:
    cfg, check_only = agent_config.load_with_options(argv)
    if check_only:
        return check_config(cfg)
    logs.configure(cfg.log_level, cfg.log_format)
    agent = build(cfg)
    try:
        agent.start(handle_signals=True)
        agent.run()
    except StartError as err:
        log.error("%s", err)
        return 1
    finally:
        agent.stop()  # whatever start() reached; the host's lease is left to expire
        threads_left()
    return 0


def threads_left() -> list[str]:
    """Names of the threads still running after stop(), logged: each is a component whose
    stop (or close) forgot it, and would go on acting on OVS or etcd in a process meant to be
    done (the policy counters' reader once did)."""
    left = sorted(t.name for t in threading.enumerate()
                  if t is not threading.current_thread() and t.is_alive())
    if left:
        log.warning("threads still running after stop: %s", ", ".join(left))
    else:
        log.info("stopped: no thread left")
    return left


def check_config(cfg: agent_config.AgentConfig) -> int:
    """--check-config: the configuration parsed and its values are sane (load_with_options
    exited 1 otherwise); the TLS files are readable and match the endpoints. Nothing starts."""
    try:
        etcd_tls.check_files(cfg.etcd_tls)
        etcd_tls.check_endpoints(cfg.etcd_tls, cfg.etcd_endpoints)
    except etcd_tls.TlsError as err:
        print(f"overlay-agent: invalid configuration: {err}", file=sys.stderr)
        return 1
    print(f"configuration OK: host {cfg.host}, etcd {','.join(cfg.etcd_endpoints)}, "
          f"ovsdb {cfg.ovsdb}, socket {cfg.socket}, metrics "
          f"{cfg.metrics_address or 'off'}, log format {cfg.log_format}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
