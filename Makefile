# The two commands a user needs are `make demo` and `make test`; both set up first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tulle-installed

# Debian packages the project runs on or tests against.
APT_PACKAGES := python3-venv nftables libnftables1 iproute2 iptables conntrack procps \
                containernetworking-plugins etcd-server podman runc busybox-static \
                nginx-light wrk iperf3
# curl: the demo's requests from inside pods (and the proxies' admin endpoints)
APT_PACKAGES += curl
# h2load: fixed-rate latency (p50/p99 at 10,000 requests/s) in bench/proxy_http.py
APT_PACKAGES += nghttp2-client
# gcc: compiles the C mypyc generates for tulle-proxy's hot path (make build)
APT_PACKAGES += gcc

PROTOS := $(shell find proto -name '*.proto' | sort)

.PHONY: help setup apt build demo test test-unit test-privileged lint proto bench clean

help:
	@echo "make demo   set up, then run the demo (a lab cluster with pods, sidecars, mTLS and policies)"
	@echo "make test   set up, then lint and run every test"
	@echo "make setup | build | lint | proto | bench | clean"

setup: apt $(STAMP) build

# Installs only what is missing, so a second run changes nothing.
apt:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $@

# tulle-proxy's hot path compiled with mypyc, in place (mypyc_build.py): rebuilt when a
# compiled module's source changed, else nothing to do. TULLE_PURE_PYTHON=1 runs the source.
build: $(STAMP)
	$(PY) mypyc_build.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	# bench/ holds scripts that import each other by module name, not a package: checked apart.
	$(VENV)/bin/mypy bench

# Fast, unprivileged tests first; then the ones that need root and the real kernel.
test: lint
	$(PY) -m pytest -m "not privileged" -q
	$(PY) -m pytest -m privileged -q

proto: setup
	$(PY) -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. $(PROTOS)

bench: setup
	$(PY) bench/control_watch_latency.py
	$(PY) bench/xds_scale.py
	$(PY) bench/cni_latency.py --pods 100
	$(PY) bench/netpol_scale.py

# A two-node lab with a meshed shop, traffic and a report (meshctl demo); the lab stays
# up for exploring: `make demo DEMO_FLAGS=--rm` removes it after the report.
demo: setup
	$(VENV)/bin/meshctl demo $(DEMO_FLAGS)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
	rm -f proxy/compiled.json $$(find proxy -name '*.so')
