"""Runs inside a lab VM (synced to /vagrant-src): one CNI command for a namespace, the way a
runtime execs /opt/cni/bin/ovs, keeping the ADD result for CHECK's prevResult.

    python vm_cni.py ADD|CHECK|DEL NAME [--network my-net] [--label KEY=VALUE ...]

Prints the plugin's exit status on the first line, then its stdout and stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from overlay.lab import containers as ctr
from overlay.lab import vm
from overlay.lab.shell import add_netns, del_netns, netns_exists

STATE = "/run/overlay-vm-tests"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=("ADD", "CHECK", "DEL"))
    parser.add_argument("name")
    parser.add_argument("--network", default=ctr.DEFAULT_NETWORK)
    parser.add_argument("--label", action="append", default=[])
    args = parser.parse_args()
    os.makedirs(STATE, exist_ok=True)
    saved = os.path.join(STATE, f"{args.name}.json")
    netconf = ctr.plugin_netconf(vm.read_conflist(args.network))
    if args.label:
        netconf = ctr.with_labels(netconf, dict(lab.split("=", 1) for lab in args.label))
    if args.command == "ADD" and not netns_exists(args.name):
        add_netns(args.name)
    if args.command == "CHECK" and os.path.exists(saved):
        with open(saved) as fh:
            netconf["prevResult"] = json.load(fh)
    out = ctr.cni_exec(vm.CNI_BIN, args.command, container_id=args.name,
                       netns=f"/var/run/netns/{args.name}", ifname="eth0", netconf=netconf)
    if args.command == "ADD" and out.returncode == 0:
        with open(saved, "w") as fh:
            fh.write(out.stdout)
    if args.command == "DEL" and out.returncode == 0:
        del_netns(args.name)
        if os.path.exists(saved):
            os.unlink(saved)
    print(out.returncode)
    print(out.stdout)
    print(out.stderr, file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
