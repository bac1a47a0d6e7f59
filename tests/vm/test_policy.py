"""Network policy on the kernel datapath, in the Vagrant lab's two VMs (docs/policy.md): the
same conjunctive rules and conntrack detours as in the netns lab, through the kernel's
openvswitch module and conntrack. A db on node1 admits TCP 5432 from the web on node2 and
nothing else (ICMP included); the replies of what it starts pass; deleting the policy reopens
it."""

from __future__ import annotations

import json
import re
import time

from vagrant_lab import VagrantLab, Vm

VENV = "/opt/overlay/venv/bin/python"
CNI = f"{VENV} /vagrant-src/tests/vm/vm_cni.py"
ETCD = "https://192.168.56.11:2379"
PKI = "/etc/overlay/pki"
# Policies are the operator's to write (hosts' etcd role may only read them): etcd's root
# certificate, which the etcd VM (node1) holds.
OPERATOR = (f"/usr/local/bin/overlayctl --etcd {ETCD} --etcd-ca {PKI}/ca.crt "
            f"--etcd-cert {PKI}/root.crt --etcd-key {PKI}/root.key")
DB = {"name": "vmdb", "endpointSelector": {"matchLabels": {"app": "vmdb"}},
      "ingress": [{"from": [{"endpointSelector": {"matchLabels": {"app": "vmweb"}}}],
                   "ports": [{"protocol": "TCP", "port": 5432}]}]}
CLIENT = ("import socket,sys\ntry:\n c=socket.create_connection((sys.argv[1],5432),timeout=2)\n"
          " sys.exit(0 if c.recv(3)==b'ok\\n' else 1)\nexcept OSError:\n sys.exit(1)\n")
SERVER = ("import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)"
          "\ns.bind(('0.0.0.0',5432))\ns.listen(16)\nwhile True:\n c,_=s.accept()\n"
          " c.sendall(b'ok\\n')\n c.close()\n")


def add(vm: Vm, name: str, app: str) -> str:
    out = vm.sh(f"{CNI} ADD {name} --network my-net --label app={app}", timeout=300).stdout
    assert out.startswith("0\n"), out
    addr = vm.sh(f"ip netns exec {name} ip -o -4 addr show dev eth0").stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", addr)
    assert match, addr
    return match.group(1)


def connects(vm: Vm, netns: str, address: str) -> bool:
    vm.sh(f"cat > /tmp/policy_client.py <<'EOF'\n{CLIENT}EOF")
    return vm.sh(f"ip netns exec {netns} {VENV} /tmp/policy_client.py {address}",
                 check=False).returncode == 0


def pings(vm: Vm, netns: str, address: str) -> bool:
    return vm.sh(f"ip netns exec {netns} ping -c 1 -W 2 {address}", check=False).returncode == 0


def until(check: object, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(1)
    return bool(check())  # type: ignore[operator]


def test_policy_on_the_kernel_datapath(lab: VagrantLab) -> None:
    node1, node2 = lab.node1, lab.node2
    db = add(node1, "pdb", "vmdb")
    add(node2, "pweb", "vmweb")
    add(node2, "poth", "other")
    node1.sh(f"cat > /tmp/policy_server.py <<'EOF'\n{SERVER}EOF")
    node1.sh(f"ip netns exec pdb nohup {VENV} /tmp/policy_server.py >/dev/null 2>&1 &")
    try:
        assert until(lambda: connects(node2, "poth", db))  # no policy yet: open
        node1.sh(f"cat > /tmp/vmdb.json <<'EOF'\n{json.dumps(DB)}\nEOF")
        node1.sh(f"{OPERATOR} policy apply -f /tmp/vmdb.json --network my-net")
        assert until(lambda: not connects(node2, "poth", db))
        assert connects(node2, "pweb", db)
        assert not pings(node2, "pweb", db)                   # ICMP: no port of the rule
        assert pings(node1, "pdb", address_of_ns(node2, "pweb"))  # its own, and the replies
        # The kernel datapath itself holds the conntrack actions (not only the OpenFlow rules).
        dp = node1.sh("ovs-appctl dpctl/dump-flows -m").stdout
        assert "ct(zone=" in dp and "recirc(" in dp, dp[-2000:]
        assert "table=90" in node1.sh("ovs-ofctl dump-flows br-int table=90").stdout
        node1.sh(f"{OPERATOR} policy delete vmdb --network my-net")
        assert until(lambda: connects(node2, "poth", db) and pings(node2, "pweb", db))
    finally:
        node1.sh(f"{OPERATOR} policy delete vmdb --network my-net", check=False)
        node1.sh("pkill -f /tmp/policy_server.py", check=False)
        for vm, name in ((node1, "pdb"), (node2, "pweb"), (node2, "poth")):
            vm.sh(f"{CNI} DEL {name} --network my-net", check=False, timeout=300)


def address_of_ns(vm: Vm, netns: str) -> str:
    out = vm.sh(f"ip netns exec {netns} ip -o -4 addr show dev eth0").stdout
    match = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    assert match, out
    return match.group(1)
