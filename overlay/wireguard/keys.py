"""A host's WireGuard key pair: X25519 (RFC 7748), in pure Python, kept in one 0600 file.

Why pure Python: the project has no crypto dependency, and the one operation needed here, the
public key of a private key, is one scalar multiplication done once per key (a few ms). The
kernel's WireGuard does the real cryptography; it also reports the public key of the private
key it was given, which overlay/agent/encryption.py compares with ours.

The private key is born on the host and never leaves it: it is written to `path` (0600, the
directory 0700) atomically, read back on every start (an agent restart keeps the key, so peers
keep their sessions), and replaced only by a rotation. Only the public key is published (the
host record), with its fingerprint for people (`overlayctl hosts`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from dataclasses import dataclass

KEY_LEN = 32
_P = 2**255 - 19
_A24 = 121665


def _clamp(scalar: bytes) -> int:
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def x25519(scalar: bytes, u_point: bytes) -> bytes:
    """RFC 7748 section 5: the Montgomery ladder on Curve25519 (constant time is not a goal
    here: it runs once per key, on the host that owns the key)."""
    k = _clamp(scalar)
    x1 = int.from_bytes(u_point, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b = (x2 + z2) % _P, (x2 - z2) % _P
        aa, bb = a * a % _P, b * b % _P
        e = (aa - bb) % _P
        c, d = (x3 + z3) % _P, (x3 - z3) % _P
        da, cb = d * a % _P, c * b % _P
        x3 = (da + cb) ** 2 % _P
        z3 = x1 * (da - cb) ** 2 % _P
        x2 = aa * bb % _P
        z2 = e * (aa + _A24 * e) % _P
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, _P - 2, _P) % _P).to_bytes(KEY_LEN, "little")


def public_of(private: bytes) -> bytes:
    return x25519(private, (9).to_bytes(KEY_LEN, "little"))


def encode(key: bytes) -> str:
    return base64.b64encode(key).decode()


def decode_public(text: object) -> bytes | None:
    """A peer's public key from its host record (untrusted): 32 bytes in base64, and not one
    of the points of small order that would make every shared secret predictable (all zero
    is the one X25519 implementations meet in practice). None if unusable."""
    if not isinstance(text, str) or len(text) != 44:
        return None
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(raw) != KEY_LEN or raw == bytes(KEY_LEN) or raw == b"\x01" + bytes(KEY_LEN - 1):
        return None
    return raw


def decode_private(text: str) -> bytes:
    raw = base64.b64decode(text, validate=True)
    if len(raw) != KEY_LEN:
        raise ValueError("a WireGuard private key is 32 bytes")
    return raw


def fingerprint(public_b64: str) -> str:
    """A short name for a public key, for people: the first 8 bytes of its SHA-256, hex."""
    digest = hashlib.sha256(public_b64.encode()).hexdigest()
    return ":".join(digest[i:i + 4] for i in range(0, 16, 4))


@dataclass(frozen=True)
class KeyPair:
    private: bytes
    public: bytes

    @classmethod
    def generate(cls) -> KeyPair:
        private = bytearray(secrets.token_bytes(KEY_LEN))
        private[0] &= 248  # stored clamped, as `wg genkey` does
        private[31] = (private[31] & 127) | 64
        return cls(bytes(private), public_of(bytes(private)))

    @property
    def public_b64(self) -> str:
        return encode(self.public)

    @property
    def private_b64(self) -> str:
        return encode(self.private)


class KeyFileError(Exception):
    """The key file exists but cannot be used (the message says why and what to do)."""


def load_or_create(path: str) -> KeyPair:
    """The key pair kept in `path`, made and saved there on the host's first start."""
    try:
        with open(path, "rb") as fh:
            text = fh.read().strip()
    except FileNotFoundError:
        pair = KeyPair.generate()
        save(path, pair)
        return pair
    try:
        private = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        private = b""
    if len(private) != KEY_LEN:
        raise KeyFileError(f"{path} does not hold a WireGuard private key (32 bytes, base64); "
                           "move it away and the agent makes a new key pair")
    if os.stat(path).st_mode & 0o077:
        os.chmod(path, 0o600)  # someone loosened it: the key stays the host's alone
    return KeyPair(private, public_of(private))


def save(path: str, pair: KeyPair) -> None:
    """Atomically: a crash leaves the old key or the new one, never half a key."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, pair.private_b64.encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
