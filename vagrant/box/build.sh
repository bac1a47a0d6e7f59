#!/usr/bin/env bash
# Builds the overlay Vagrant box for the libvirt provider from Debian packages alone, so that
# `vagrant up` needs no download: debootstrap of bookworm, the cloud kernel (it carries
# openvswitch.ko, so the VMs run OVS's kernel datapath), the packages in packages.txt, and a
# virtualenv at /opt/overlay/venv holding the project's Python dependencies (provisioning then
# installs the project itself with `pip --no-index`).
#
#   vagrant/box/build.sh [CACHE_DIR]      default /var/cache/overlay/box; needs root
#
# The box is cached under CACHE_DIR/<hash>/ where <hash> covers what the box holds and nothing
# else: this script, packages.txt and the two dependency lists of pyproject.toml (the project's
# dependencies and the build requirements, which go into the box's venv). The project itself is
# not in the box (provisioning installs it from the synced tree), so an edit of its metadata,
# version, scripts or tool settings does not rebuild the box; the same inputs never build twice.
# It is added to Vagrant as `overlay/bookworm` (replacing an older one). Prints the box's path
# on its last line.
#
# The disk is one ext4 filesystem with no partition table and no bootloader (made with
# `mkfs.ext4 -d`, so no loop device or mount is needed); the VMs boot the kernel and initrd kept
# beside the box directly (libvirt <kernel>/<initrd>), see vagrant/Vagrantfile.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=$(cd "$HERE/../.." && pwd)
CACHE=${1:-${OVERLAY_BOX_CACHE:-/var/cache/overlay/box}}
BOX_NAME=${OVERLAY_BOX_NAME:-overlay/bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DISK_SIZE=${OVERLAY_BOX_DISK:-4G}

# The project's runtime dependencies, plus what `pip install --no-index -e` of the project needs
# (setuptools, wheel, grpcio-tools to generate the gRPC stubs), read from pyproject.toml.
deps=$(python3 - "$SRC/pyproject.toml" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    data = tomllib.load(fh)
print("\n".join(data["project"]["dependencies"] + data["build-system"]["requires"] + ["wheel"]))
PY
)
hash=$(printf '%s\n' "$deps" | cat "$HERE/build.sh" "$HERE/packages.txt" - | sha256sum | cut -c1-16)
out="$CACHE/$hash"
box="$out/overlay-bookworm.box"

add_box() {
  # Vagrant keeps its own copy; re-add only when the one it has came from another build.
  if [ "$(cat "$CACHE/added" 2>/dev/null)" != "$hash" ] \
     || ! vagrant box list 2>/dev/null | grep -q "^$BOX_NAME "; then
    vagrant box add --force --name "$BOX_NAME" "$box" >&2
    echo "$hash" > "$CACHE/added"
  fi
}

if [ -f "$box" ]; then
  echo "box cached: $box (inputs unchanged)" >&2
  add_box
  echo "$box"
  exit 0
fi

[ "$(id -u)" = 0 ] || { echo "build.sh needs root (debootstrap, chroot)" >&2; exit 1; }
for tool in debootstrap mkfs.ext4 qemu-img vagrant; do
  command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install debootstrap e2fsprogs qemu-utils vagrant)" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/overlay-box.XXXXXX")
root="$work/root"
cleanup() {
  for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

packages=$(grep -v '^\s*#' "$HERE/packages.txt" | grep -v '^\s*$' | paste -sd, -)
echo "debootstrap bookworm ($MIRROR)" >&2
# Everything in one debootstrap run: faster than apt-get in the chroot afterwards.
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$MIRROR" >&2

mount -t proc proc "$root/proc"
mount -t sysfs sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
cp /etc/resolv.conf "$root/etc/resolv.conf"   # for pip only; removed below

in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root "$@"; }

echo "$deps" > "$root/tmp/requirements.txt"
# Wheels are fetched (and sdists built) by this machine's pip, with its index and CA settings,
# then installed in the chroot with no index: same Debian, same Python 3.11, so they fit.
python3 -m pip wheel -q -r "$root/tmp/requirements.txt" -w "$root/tmp/wheels" >&2
in_root python3 -m venv /opt/overlay/venv
in_root /opt/overlay/venv/bin/pip install -q --no-index --find-links /tmp/wheels \
  -r /tmp/requirements.txt >&2
cp "$root/tmp/requirements.txt" "$root/opt/overlay/box-requirements.txt"
# install-deps.sh reads this: the dependencies are in place, install the project offline.
touch "$root/opt/overlay/venv/.overlay-offline"

# What Vagrant expects of a box: user vagrant (password vagrant, passwordless sudo, Vagrant's
# well-known insecure key, replaced by a per-machine key on first `vagrant up`).
in_root useradd -m -s /bin/bash -G sudo vagrant
echo 'vagrant:vagrant' | in_root chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > "$root/etc/sudoers.d/vagrant"
chmod 440 "$root/etc/sudoers.d/vagrant"
key=$(find /usr /opt -path "*/vagrant*/keys/vagrant.pub" -print 2>/dev/null | head -1)
[ -n "$key" ] || { echo "Vagrant's insecure public key (keys/vagrant.pub) not found" >&2; exit 1; }
install -d -m 700 -o 1000 -g 1000 "$root/home/vagrant/.ssh"
install -m 600 -o 1000 -g 1000 "$key" "$root/home/vagrant/.ssh/authorized_keys"
# Vagrant 2.3 also offers an ed25519 insecure key; a box must accept both.
for k in $(dirname "$key")/vagrant.key.*.pub; do
  [ -f "$k" ] && cat "$k" >> "$root/home/vagrant/.ssh/authorized_keys"
done
echo "UseDNS no" > "$root/etc/ssh/sshd_config.d/vagrant.conf"
# Each VM gets its own host key at first boot, not one made in the chroot. Only ed25519: RSA
# key generation alone took over a minute of a TCG boot.
rm -f "$root"/etc/ssh/ssh_host_*
echo "HostKey /etc/ssh/ssh_host_ed25519_key" >> "$root/etc/ssh/sshd_config.d/vagrant.conf"
cat > "$root/etc/systemd/system/ssh-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate the SSH host key on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key

[Install]
WantedBy=multi-user.target
UNIT
in_root systemctl enable ssh-hostkeys.service >&2
# Periodic jobs that only cost boot time (and CPU under TCG) in a short-lived lab VM.
in_root systemctl mask e2scrub_reap.service e2scrub_all.timer apt-daily.timer \
  apt-daily-upgrade.timer man-db.timer fstrim.timer >&2 || true

# eth0 is the management NIC (DHCP from libvirt); Vagrant writes the private network's stanza.
cat > "$root/etc/network/interfaces" <<'NET'
source /etc/network/interfaces.d/*
auto lo
iface lo inet loopback
allow-hotplug eth0
iface eth0 inet dhcp
NET
echo "/dev/vda / ext4 defaults,errors=remount-ro 0 1" > "$root/etc/fstab"
echo overlay-box > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 overlay-box\n' > "$root/etc/hosts"
echo "openvswitch" > "$root/etc/modules-load.d/openvswitch.conf"
# Debian's etcd-server starts a single-member etcd on 127.0.0.1; the lab runs its own unit.
in_root systemctl disable etcd.service >&2 || true
in_root apt-get clean
rm -rf "$root/var/lib/apt/lists/"* "$root/tmp/"* "$root/root/.cache"
: > "$root/etc/resolv.conf"
: > "$root/etc/machine-id"   # a fresh one per VM at first boot

mkdir -p "$out.tmp"
cp "$root"/boot/vmlinuz-* "$out.tmp/vmlinuz"
cp "$root"/boot/initrd.img-* "$out.tmp/initrd.img"
chmod 644 "$out.tmp/vmlinuz" "$out.tmp/initrd.img"
for m in dev/pts dev sys proc; do umount -l "$root/$m"; done

echo "disk image" >&2
mkfs.ext4 -q -L overlay-root -d "$root" "$work/root.raw" "$DISK_SIZE" >&2
qemu-img convert -O qcow2 "$work/root.raw" "$out.tmp/box.img"
size_gb=$(( $(qemu-img info --output=json "$out.tmp/box.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])') / 1024 / 1024 / 1024 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %s}\n' "$size_gb" > "$out.tmp/metadata.json"
# The box's own Vagrantfile: boot the kernel beside the box, names eth0/eth1 as ifupdown expects.
cat > "$out.tmp/Vagrantfile" <<VF
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.kernel = "$out/vmlinuz"
    lv.initrd = "$out/initrd.img"
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0"
  end
end
VF
tar -C "$out.tmp" -cf "$out.tmp/overlay-bookworm.box" metadata.json Vagrantfile box.img
rm "$out.tmp/box.img"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "built $box" >&2
add_box
echo "$box"
