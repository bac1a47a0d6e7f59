#!/usr/bin/env bash
# Stops the libvirt daemons vagrant/libvirt-up.sh started itself (none on a systemd machine).
set -uo pipefail
STATE=${OVERLAY_LIBVIRT_STATE:-/run/overlay-libvirt}
for d in libvirtd virtlogd; do
  if [ -f "$STATE/$d.pid" ]; then
    pid=$(cat "$STATE/$d.pid")
    if [ "$(cat /proc/"$pid"/comm 2>/dev/null)" = "$d" ]; then
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$STATE/$d.pid"
  fi
done
