#!/usr/bin/env bash
# Installs what overlay needs on a Debian 12 machine: the system packages (only those missing)
# and a Python virtualenv with the project in it. Shared by `make lab`/`make test`, .ci/run and
# the Vagrant VMs, so every place that runs overlay is set up the same way.
#
#   VENV=/path/to/venv  (default: .venv in the source tree)
#   SRC=/path/to/source (default: this script's repository)
set -euo pipefail

SRC=${SRC:-$(cd "$(dirname "$0")/.." && pwd)}
VENV=${VENV:-$SRC/.venv}
PACKAGES=(openvswitch-switch openvswitch-common etcd-server etcd-client iproute2 iputils-ping
          tcpdump ethtool iperf3 python3-venv python3-pip)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The project is installed editable, so the generated gRPC stubs land in the source tree.
stamp="$VENV/.overlay-installed"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ "$SRC/pyproject.toml" -nt "$stamp" ] || [ "$SRC/setup.py" -nt "$stamp" ] \
   || [ -n "$(find "$SRC/proto" -newer "$stamp" -name '*.proto' 2>/dev/null)" ] \
   || ! ls "$SRC"/overlay/cni/v1/cni_pb2.py >/dev/null 2>&1; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e "$SRC[test]"
  touch "$stamp"
fi
