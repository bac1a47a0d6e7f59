#!/usr/bin/env bash
# Builds the agent's container image from Debian packages alone, with the recipe of the VM box
# (vagrant/box/build.sh): no base image is pulled. debootstrap of bookworm with the packages in
# packages.txt; the project's Python dependencies fetched as wheels by this machine's pip and
# installed in the chroot with no index; the project itself built from this tree inside the
# chroot (so its gRPC stubs come from the grpcio-tools matching the image's grpcio) into
# /opt/overlay/venv; then one OCI layer (oci_archive.py).
#
#   deploy/image/build.sh [CACHE_DIR]     default /var/cache/overlay/image; needs root
#
# Output, printed on the last line: CACHE_DIR/<hash>/overlay-agent-image.tar, an OCI image
# layout named localhost/overlay/agent:<version of pyproject.toml> (OVERLAY_IMAGE_NAME
# overrides; "localhost/" so that the name kubelet asks containerd for is this one as written):
#   ctr -n k8s.io images import overlay-agent-image.tar     (containerd, what kubelet uses)
#   docker load -i overlay-agent-image.tar
# <hash> covers this script, packages.txt, oci_archive.py and every file of the package
# (tracked or new, not ignored): the same inputs never build twice. A build takes a few minutes
# (the Debian mirror, DEBIAN_MIRROR, must answer).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
CACHE=${1:-${OVERLAY_IMAGE_CACHE:-/var/cache/overlay/image}}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
INPUTS=(pyproject.toml setup.py MANIFEST.in LICENSE README.md overlay plugins/ovs proto)

version=$(python3 -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SRC/pyproject.toml")
NAME=${OVERLAY_IMAGE_NAME:-localhost/overlay/agent:$version}
files() { git -C "$SRC" ls-files -z --cached --others --exclude-standard -- "${INPUTS[@]}"; }
hash=$( { cat "$HERE/build.sh" "$HERE/packages.txt" "$HERE/oci_archive.py"; echo "$NAME";
          files | (cd "$SRC" && xargs -0 sha256sum | sort -k2); } | sha256sum | cut -c1-16)
out="$CACHE/$hash"
image="$out/overlay-agent-image.tar"
if [ -f "$image" ]; then
  echo "image cached: $image (inputs unchanged)" >&2
  echo "$image"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "build.sh needs root (debootstrap, chroot)" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "missing debootstrap (apt-get install debootstrap)" >&2; exit 1; }

mkdir -p "$CACHE"
work=$(mktemp -d "$CACHE/build.XXXXXX")   # beside the output: the layer is large
root="$work/root"
cleanup() {
  for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

packages=$(grep -v '^\s*#' "$HERE/packages.txt" | grep -v '^\s*$' | paste -sd, -)
echo "debootstrap bookworm ($MIRROR)" >&2
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$MIRROR" >&2

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

# Dependencies and build requirements, read from pyproject.toml (as the box reads them).
python3 - "$SRC/pyproject.toml" > "$root/tmp/requirements.txt" <<'PY'
import sys, tomllib
data = tomllib.load(open(sys.argv[1], "rb"))
print("\n".join(data["project"]["dependencies"] + data["build-system"]["requires"] + ["wheel"]))
PY
python3 -m pip wheel -q -r "$root/tmp/requirements.txt" -w "$root/tmp/wheels" >&2
mkdir "$root/tmp/src"
files | tar -C "$SRC" --null -T - -cf - | tar -C "$root/tmp/src" -xf -
in_root python3 -m venv /opt/overlay/venv
in_root /opt/overlay/venv/bin/pip install -q --no-index --find-links /tmp/wheels \
  -r /tmp/requirements.txt >&2
in_root /opt/overlay/venv/bin/pip install -q --no-index --no-deps --no-build-isolation /tmp/src >&2
# Only the build needed these; the agent never imports them.
in_root /opt/overlay/venv/bin/pip uninstall -q -y grpcio-tools wheel >&2
in_root /opt/overlay/venv/bin/python -c 'import overlay.agent.main, overlay.install.cli' >&2
# The compiled plugin, built here with this machine's Go (a static binary: the image needs no
# Go): the init container's overlay-install copies it to the node, which then needs no Python
# for the plugin either. Without Go here, the node gets the standalone Python plugin.
if command -v go >/dev/null; then
  "$SRC/scripts/build-plugin.sh" "$root/opt/overlay/venv/bin/overlay-cni-ovs" >&2
fi
mkdir -p "$root/etc/overlay/config" "$root/etc/overlay/pki"   # the ConfigMap's, the Secret's
in_root apt-get clean
for m in dev/pts dev sys proc; do umount -l "$root/$m"; done
rm -rf "$root/var/lib/apt/lists/"* "$root/root/.cache" "$root/tmp/"*
: > "$root/etc/resolv.conf"; : > "$root/etc/hostname"

echo "OCI layer ($NAME)" >&2
mkdir -p "$out.tmp"
python3 "$HERE/oci_archive.py" "$root" "$out.tmp/overlay-agent-image.tar" "$NAME" \
  --cmd '["overlay-agent", "--config", "/etc/overlay/config/agent.toml"]' >&2
rm -rf "$out"
mv "$out.tmp" "$out"
echo "built $image" >&2
echo "$image"
