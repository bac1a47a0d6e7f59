#!/usr/bin/env bash
# `make vagrant-lab-down`: destroys the lab's VMs and everything libvirt made for them (domains,
# their disks, the two networks, the box's base volume uploaded into the storage pool), then
# stops the libvirt daemons if vagrant/libvirt-up.sh started them. Safe to run twice.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
export VAGRANT_CHECKPOINT_DISABLE=1 VAGRANT_BOX_UPDATE_CHECK_DISABLE=1
if virsh -c qemu:///system version >/dev/null 2>&1; then
  (cd "$HERE" && vagrant destroy -f)
  # vagrant-libvirt removes the networks it created once no domain uses them; these two are
  # named by the Vagrantfile, so a half-failed `up` cannot leave them behind either.
  for net in overlay-lab overlay-mgmt; do
    virsh -q net-destroy "$net" >/dev/null 2>&1
    virsh -q net-undefine "$net" >/dev/null 2>&1
  done
  # The box's image, copied into the pool on the first `up` (it is also kept in ~/.vagrant.d).
  for vol in $(virsh -q vol-list default 2>/dev/null | awk '/^ *overlay-VAGRANTSLASH-bookworm_vagrant_box_image/ {print $1}'); do
    virsh -q vol-delete --pool default "$vol" >/dev/null
  done
  left=$(virsh list --all --name | grep -c '^vagrant_node')
  [ "$left" = 0 ] || { echo "vagrant-lab-down: $left domain(s) left, libvirtd kept running" >&2; exit 1; }
fi
"$HERE/libvirt-down.sh"
