# overlay: the two commands of the quick start are `make lab` and `make test` (as root).
VENV   ?= .venv
PY     := $(VENV)/bin/python
HOSTS  ?= 2
LABDIR ?= /run/overlay-lab
export OVERLAY_LAB_DIR := $(LABDIR)

.PHONY: deps lab lab-up lab-down test test-unit test-integration test-e2e test-package image lint proto clean bench \
        bench-scale bench-policy vm-deps box vagrant-lab vagrant-lab-down test-vm

deps:
	@VENV=$(abspath $(VENV)) WITH_TEST_DEPS=1 scripts/install-deps.sh

## make lab: bring up HOSTS hosts (default 2), attach c0 and c1, ping across hosts.
## etcd runs with TLS, client certificates and a user per host; TLS=0 keeps plain http.
lab: deps
	$(PY) -m overlay.lab up --hosts $(HOSTS) $(if $(filter 0,$(TLS)),--no-tls,$(if $(filter 1,$(TLS)),--tls))
	$(PY) -m overlay.lab demo

lab-down:
	@if [ -x $(PY) ]; then $(PY) -m overlay.lab down; fi

## make test: the whole suite (unit, integration, e2e); needs root for the last two.
test: deps
	$(PY) -m pytest tests

test-unit: deps
	$(PY) -m pytest tests/unit

test-integration: deps
	$(PY) -m pytest tests/integration

test-e2e: deps
	$(PY) -m pytest tests/e2e

## make test-package: the wheel and sdist built, installed in a clean venv, a lab run from it
## (tests/package; OVERLAY_IMAGE=1 also builds the agent's image and runs it in containerd)
test-package: deps
	$(PY) -m pytest tests/package

## make image: the agent's container image from Debian packages (deploy/image/build.sh; root)
image:
	deploy/image/build.sh

## The Vagrant lab (root, libvirt). OVERLAY_BOX=debian/bookworm64 uses the public box instead of
## the one `make box` builds offline from Debian packages (cached in BOX_CACHE).
BOX_CACHE   ?= /var/cache/overlay/box
OVERLAY_BOX ?= overlay/bookworm
export OVERLAY_BOX
export VAGRANT_CHECKPOINT_DISABLE := 1
export VAGRANT_BOX_UPDATE_CHECK_DISABLE := 1

vm-deps:
	@VENV=$(abspath $(VENV)) WITH_TEST_DEPS=1 WITH_VM_DEPS=1 scripts/install-deps.sh

box: vm-deps
	vagrant/box/build.sh $(BOX_CACHE)

## make vagrant-lab: libvirtd started if needed, KVM if it runs guests else TCG, both VMs up,
## provisioning ends with c2 on node2 pinging c1 on node1 over VXLAN VNI 42.
vagrant-lab: vm-deps
	@if [ "$(OVERLAY_BOX)" = overlay/bookworm ]; then vagrant/box/build.sh $(BOX_CACHE) >/dev/null; fi
	driver=$$(vagrant/libvirt-up.sh) && echo "libvirt domain type: $$driver" && \
	  cd vagrant && OVERLAY_LIBVIRT_DRIVER=$$driver vagrant up --provider=libvirt

## make vagrant-lab-down: no domain, network, volume or daemon of ours left behind.
vagrant-lab-down:
	vagrant/vagrant-lab-down.sh

## make test-vm: the VM tier (tests/vm): vagrant up once, kernel-datapath checks, destroy.
test-vm: vm-deps
	OVERLAY_VM_TESTS=1 $(PY) -m pytest tests/vm --durations=0

## make bench: CNI ADD/DEL latency, ours vs bridge+host-local through libcni (root; < 3 min),
## then pod sandbox start through containerd's CRI, ours vs bridge+host-local (bench/cri_sandbox.py),
## then egress through the gateway vs the host and east-west (bench/egress.py),
## then 20 ovs-vswitchd restarts: time until the flows are back (bench/ovs_restart.py),
## then the control plane at scale (SCALE_SIZES remote endpoints; bench/scale.py)
SCALE_SIZES ?= 1000,10000,50000
bench: deps
	$(PY) bench/cni_latency.py
	$(PY) bench/cri_sandbox.py
	$(PY) bench/egress.py
	$(PY) bench/ovs_restart.py
	$(PY) bench/docker_run.py
	$(PY) bench/scale.py --sizes $(SCALE_SIZES)

## make bench-scale: one agent against 1,000 / 10,000 / 50,000 simulated remote endpoints
bench-scale: deps
	$(PY) bench/scale.py --sizes $(SCALE_SIZES)

## make bench-policy: 10,000 remote and 100 local endpoints, 500 policies: flows, policy and
## label changes -> switch, RSS; TCP through a policed pair vs an unpoliced one (bench/policy.py)
bench-policy: deps
	$(PY) bench/policy.py

## make lint also checks the floors (no import up a floor) and the sizes: scripts/check_layers.py;
## and the compiled plugin with gofmt and go vet.
lint: deps
	$(VENV)/bin/ruff check overlay plugins tests bench scripts deploy
	$(VENV)/bin/mypy -p overlay -p overlay_plugin_ovs
	MYPYPATH=tests $(VENV)/bin/mypy bench/cni_latency.py bench/cni_profile.py bench/cni_compare.py bench/egress.py bench/scale.py bench/policy.py bench/egress_ovs_nat.py bench/ovs_restart.py bench/docker_run.py bench/cri_sandbox.py bench/port_add.py tests/libcni/build.py scripts/check_layers.py \
	    deploy/image/oci_archive.py
	$(PY) scripts/check_layers.py
	@out=$$(gofmt -l plugins/ovs/go); if [ -n "$$out" ]; then echo "gofmt: $$out"; exit 1; fi
	cd plugins/ovs/go && GOPATH=/usr/share/gocode GO111MODULE=off GOFLAGS= CGO_ENABLED=0 \
	    GOCACHE=/var/cache/overlay/go-build go vet .

proto: deps
	$(PY) -m grpc_tools.protoc -Iproto --python_out=. --grpc_python_out=. --pyi_out=. \
	    proto/overlay/cni/v1/cni.proto

clean: lab-down
	rm -rf $(VENV) *.egg-info overlay/cni/v1/*_pb2*
