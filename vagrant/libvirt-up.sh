#!/usr/bin/env bash
# Makes sure libvirtd (and virtlogd, which qemu domains log through) serve qemu:///system, and
# prints the libvirt domain type the VMs should use: "kvm" when KVM can run a guest, else "qemu"
# (TCG, software emulation). Needs root.
#
# On a machine booted with systemd the packaged units are used. Containers and CI runners often
# have no systemd as PID 1; there the daemons are started directly (`-d`, they daemonize) and
# stay up until the machine goes away (vagrant/libvirt-down.sh stops the ones started here).
set -euo pipefail
STATE=${OVERLAY_LIBVIRT_STATE:-/run/overlay-libvirt}
mkdir -p "$STATE"

if [ -d /run/systemd/system ]; then
  systemctl start virtlogd.socket libvirtd.service >&2
else
  if ! pgrep -x virtlogd >/dev/null; then
    virtlogd -d
    pgrep -x -n virtlogd > "$STATE/virtlogd.pid"
  fi
  if ! pgrep -x libvirtd >/dev/null; then
    libvirtd -d
    pgrep -x -n libvirtd > "$STATE/libvirtd.pid"
  fi
fi
for _ in $(seq 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null

# /dev/kvm can exist and still be unable to run a guest (nested virtualisation that stops on a
# KVM MSR, as on our CI machine, where qemu's BIOS still starts but a kernel never prints a
# line). So boot a real kernel with no root filesystem under KVM: where KVM works it panics
# ("Kernel panic", then exits thanks to -no-reboot) within a few seconds.
if [ -s "$STATE/driver" ]; then cat "$STATE/driver"; exit 0; fi   # probed once per boot
driver=qemu
kernel=${OVERLAY_PROBE_KERNEL:-$(ls /boot/vmlinuz-* "${OVERLAY_BOX_CACHE:-/var/cache/overlay/box}"/*/vmlinuz 2>/dev/null | head -1 || true)}
if [ -w /dev/kvm ] && [ -n "$kernel" ] && command -v qemu-system-x86_64 >/dev/null; then
  timeout 15 qemu-system-x86_64 -accel kvm -display none -nodefaults -no-reboot -m 256 \
    -serial stdio -kernel "$kernel" -append "console=ttyS0 panic=-1" >"$STATE/kvm-probe.log" 2>&1 || true
  grep -q "Kernel panic" "$STATE/kvm-probe.log" && driver=kvm
fi
echo "$driver" | tee "$STATE/driver"
