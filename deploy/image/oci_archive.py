"""A root filesystem directory -> an OCI image-layout tar, one layer (no registry, no daemon).

    python3 deploy/image/oci_archive.py ROOTFS OUT.tar NAME [--cmd JSON-LIST]

`ctr -n k8s.io images import OUT.tar` and `docker load -i OUT.tar` both take it; the image is
named NAME (the index's io.containerd.image.name and org.opencontainers.image.ref.name). Only
the standard library: it runs with the build machine's python3.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import platform
import tarfile
import tempfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
# Mount points the runtime fills; their contents never go into a layer.
EMPTY_DIRS = ("proc", "sys", "dev", "run", "tmp")


def _layer(rootfs: str, out: str) -> None:
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = info.name.split("/")
        if len(parts) > 1 and parts[0] in EMPTY_DIRS:
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(rootfs)):
            tar.add(os.path.join(rootfs, name), arcname=name, filter=keep)


def _digest(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return "sha256:" + h.hexdigest(), os.path.getsize(path)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def build(rootfs: str, out: str, name: str, cmd: list[str]) -> str:
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(out))) as tmp:
        layer = os.path.join(tmp, "layer.tar")
        _layer(rootfs, layer)
        layer_digest, layer_size = _digest(layer)
        config = json.dumps({
            "architecture": ARCH, "os": "linux",
            "config": {"Env": ["PATH=/opt/overlay/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                       "Cmd": cmd},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }).encode()
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": config_digest, "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": layer_digest, "size": layer_size}],
        }).encode()
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        index = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "digest": manifest_digest, "size": len(manifest),
                           "platform": {"architecture": ARCH, "os": "linux"},
                           "annotations": {"io.containerd.image.name": name,
                                           "org.opencontainers.image.ref.name": name}}],
        }).encode()
        with tarfile.open(out + ".tmp", "w", format=tarfile.PAX_FORMAT) as tar:
            _add(tar, "oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode())
            _add(tar, "index.json", index)
            tar.add(layer, arcname="blobs/sha256/" + layer_digest.split(":")[1])
            _add(tar, "blobs/sha256/" + config_digest.split(":")[1], config)
            _add(tar, "blobs/sha256/" + manifest_digest.split(":")[1], manifest)
        os.replace(out + ".tmp", out)
    return manifest_digest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rootfs")
    parser.add_argument("out")
    parser.add_argument("name")
    parser.add_argument("--cmd", type=json.loads, default=[], help='e.g. \'["overlay-agent"]\'')
    args = parser.parse_args()
    digest = build(args.rootfs, args.out, args.name, args.cmd)
    print(f"{args.out}: {args.name} (manifest {digest})")


if __name__ == "__main__":
    main()
