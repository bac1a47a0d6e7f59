"""A container image built here, from Debian's busybox-static, as an OCI archive that
`ctr image import` takes: no registry, no download.

One layer (busybox and the applet links a test needs), a config naming the platform, a
manifest, and an index whose annotation gives the image its name.
"""

from __future__ import annotations

import hashlib
import io
import json
import platform
import tarfile
from typing import Any

BUSYBOX = "/bin/busybox"  # busybox-static: no shared libraries to copy along
APPLETS = ("sh", "ping", "ip", "sleep", "cat", "echo", "ifconfig", "hostname", "nc")
ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def is_static(path: str = BUSYBOX) -> bool:
    """A dynamic busybox would need its libc inside the image (ELF without PT_INTERP)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(1 << 16)
    except OSError:
        return False
    return b"/lib64/ld-linux" not in data and b"/lib/ld-linux" not in data


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _layer() -> bytes:
    with open(BUSYBOX, "rb") as fh:
        busybox = fh.read()
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for d in ("bin", "etc", "proc", "sys", "dev", "tmp"):
        info = tarfile.TarInfo(d)
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        entries.append((info, None))
    info = tarfile.TarInfo("bin/busybox")
    info.size, info.mode = len(busybox), 0o755
    entries.append((info, busybox))
    for applet in APPLETS:
        link = tarfile.TarInfo(f"bin/{applet}")
        link.type, link.linkname = tarfile.SYMTYPE, "busybox"
        entries.append((link, None))
    return _tar(entries)


def _blob(data: bytes) -> tuple[str, bytes]:
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def oci_archive(name: str, entrypoint: tuple[str, ...] = ()) -> bytes:
    """The image `name` (e.g. "localhost/overlay-busybox:1") as an OCI image-layout tar;
    with `entrypoint` (e.g. a long sleep: a pause image), what its containers run."""
    layer_digest, layer = _blob(_layer())
    run: dict[str, Any] = {"Entrypoint": list(entrypoint), "Cmd": []} if entrypoint else {
        "Cmd": ["/bin/sh"]}
    config: dict[str, Any] = {
        "architecture": ARCH, "os": "linux",
        "config": {"Env": ["PATH=/bin"], **run},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }
    config_digest, config_bytes = _blob(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest, "size": len(layer)}],
    }
    manifest_digest, manifest_bytes = _blob(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": len(manifest_bytes),
                       "platform": {"architecture": ARCH, "os": "linux"},
                       "annotations": {"io.containerd.image.name": name,
                                       "org.opencontainers.image.ref.name": name}}],
    }
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for path, data in (("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
                       ("index.json", json.dumps(index).encode())):
        info = tarfile.TarInfo(path)
        info.size = len(data)
        entries.append((info, data))
    for digest, data in ((layer_digest, layer), (config_digest, config_bytes),
                         (manifest_digest, manifest_bytes)):
        info = tarfile.TarInfo("blobs/sha256/" + digest.split(":")[1])
        info.size = len(data)
        entries.append((info, data))
    return _tar(entries)
