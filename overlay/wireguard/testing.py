"""A WireGuard device in memory, for unit tests of agent/encryption.py (the real one needs the
kernel's wireguard module, which only the VM tier has)."""

from __future__ import annotations

from overlay.wireguard import keys
from overlay.wireguard.device import PeerStats
from overlay.wireguard.peers import Peer


class FakeDevice:
    def __init__(self, *, address: str = "100.64.0.1", subnet: str = "100.64.0.0/16",
                 port: int = 51820, ifname: str = "wg-ovl") -> None:
        self.ifname, self.address, self.subnet, self.port = ifname, address, subnet, port
        self.private = ""
        self.held: dict[str, Peer] = {}   # public key -> peer, as the kernel keys them
        self.log: list[str] = []          # "set HOST" / "remove KEY", in order
        self.present = False
        self.fail_set: set[str] = set()   # hosts whose set_peer fails

    def ensure(self, private_b64: str) -> None:
        self.present = True
        self.private = private_b64

    def set_private_key(self, private_b64: str) -> None:
        self.private = private_b64

    def public_key(self) -> str:
        return keys.encode(keys.public_of(keys.decode_private(self.private)))

    def set_peer(self, peer: Peer) -> None:
        from overlay.errors import CniError, Code
        if peer.host in self.fail_set:
            raise CniError(Code.NETLINK_FAILURE, f"cannot set peer {peer.host}")
        # The kernel gives an allowed address to one peer only: a new key takes it over.
        for key, other in list(self.held.items()):
            if other.address == peer.address and key != peer.public_key:
                self.held[key] = Peer(other.host, key, "", other.endpoint, other.port)
        self.held[peer.public_key] = peer
        self.log.append(f"set {peer.host}")

    def remove_peer(self, public_b64: str) -> None:
        self.held.pop(public_b64, None)
        self.log.append(f"remove {public_b64[:8]}")

    def peers(self) -> list[PeerStats]:
        return [PeerStats(k, f"{p.endpoint}:{p.port}", 0.0, 0, 0) for k, p in self.held.items()]

    def exists(self) -> bool:
        return self.present
