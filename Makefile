# samserve: `make run` builds and serves; `make test` runs the whole suite.
# Both fetch ONNX Runtime themselves (the PyPI onnxruntime wheel's shared library).

ORT_VERSION ?= 1.31.1
ORT_DIR     := .ort
ORT_LIB     := $(ORT_DIR)/lib/libonnxruntime.so
PYTHON      ?= python3
CARGO       ?= cargo

export ORT_DYLIB_PATH := $(CURDIR)/$(ORT_LIB)

.PHONY: run build test ort fmt lint openapi bench bench-quick clean browser-deps hybrid-parity

run: $(ORT_LIB)
	$(CARGO) run --release --bin samserve -- $(ARGS)

build: $(ORT_LIB)
	$(CARGO) build --release --workspace

test: $(ORT_LIB) browser-deps
	$(CARGO) test --release --workspace --all-targets

# Load test + in-process decoder baseline against the default model (and a random-init
# ViT-B from `make export-check` when present), then segment everything against the
# reference generator; writes target/bench/{bench.md,bench.json,everything.json}; then the
# ViT-B upload time with 1 encoder thread vs the default (target/bench/upload.md) and fp32
# vs int8 agreement and speed (target/bench/int8.md).
# BENCH_ARGS passes extra flags to the load test (e.g. --duration 20).
bench: $(ORT_LIB)
	$(CARGO) build --release --workspace
	target/release/samserve-loadtest bench --server-bin target/release/samserve \
		--model models/sam-tiny --out target/bench $(BENCH_ARGS)
	@if [ -f target/vitb-random/manifest.json ]; then \
		target/release/samserve-loadtest bench --server-bin target/release/samserve \
			--model target/vitb-random --out target/bench-vitb --quick $(BENCH_ARGS); \
	fi
	$(MAKE) bench-everything
	$(MAKE) bench-threads
	$(MAKE) bench-int8

bench-quick: $(ORT_LIB)
	$(CARGO) build --release --workspace
	target/release/samserve-loadtest bench --server-bin target/release/samserve \
		--model models/sam-tiny --out target/bench --quick

ort: $(ORT_LIB)

# The onnxruntime wheel ships libonnxruntime.so; unpack just that file.
$(ORT_LIB):
	mkdir -p $(ORT_DIR)/wheel $(ORT_DIR)/lib
	$(PYTHON) -m pip download --quiet --no-deps --only-binary=:all: \
		-d $(ORT_DIR)/wheel onnxruntime==$(ORT_VERSION)
	$(PYTHON) tools/unpack_ort.py $(ORT_DIR)/wheel $(ORT_VERSION) $(ORT_DIR)/lib
	test -f $@

# Rewrites openapi/openapi.json from the code (the test fails when it drifts).
openapi: $(ORT_LIB)
	SAMSERVE_WRITE_OPENAPI=1 $(CARGO) test --release --test openapi

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(ORT_DIR)

# --- Deployment (docker/) ---------------------------------------------------------------
# `make test` also: installs redis-server and nginx for tests/cluster.rs (Debian packages,
# when missing), checks that the `cuda` feature still compiles (no GPU needed), and
# validates the Kubernetes manifests offline against the bundled Kubernetes schemas of
# the PyPI package kubernetes-validate.
K8S_VENV             := target/k8s-venv
K8S_VALIDATE_VERSION ?= 1.37.0
K8S_VERSION          ?= 1.37.0

.PHONY: cluster-deps cuda-check k8s-validate

test: cluster-deps cuda-check k8s-validate

cluster-deps:
	@if [ "$$SAMSERVE_SKIP_CLUSTER_TEST" = 1 ]; then exit 0; fi; \
	PATH="$$PATH:/usr/sbin:/sbin"; \
	if ! command -v redis-server >/dev/null || ! command -v nginx >/dev/null; then \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server nginx; \
	fi

cuda-check: $(ORT_LIB)
	$(CARGO) check --release --features cuda --bin samserve

k8s-validate: $(K8S_VENV)/.installed
	$(K8S_VENV)/bin/kubernetes-validate --strict --quiet -k $(K8S_VERSION) \
		docker/k8s/*.yaml docker/k8s/*/*.yaml

$(K8S_VENV)/.installed:
	$(PYTHON) -m venv $(K8S_VENV)
	$(K8S_VENV)/bin/pip install --quiet kubernetes-validate==$(K8S_VALIDATE_VERSION)
# Browser tests (tests/browser.rs): Debian's Chromium and playwright-core from npm (no
# browser download). Installs only what is missing; apt-get needs root (CI runs as root).
BROWSER_DIR := tests/browser
# Each package only when its command is missing: a machine with NodeSource's nodejs (npm
# bundled) refuses Debian's npm package beside it.
browser-deps: $(BROWSER_DIR)/node_modules/.package-lock.json
	@pkgs=""; command -v chromium >/dev/null 2>&1 || pkgs="chromium"; \
	command -v node >/dev/null 2>&1 || pkgs="$$pkgs nodejs npm"; \
	if [ -n "$$pkgs" ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$pkgs; fi

$(BROWSER_DIR)/node_modules/.package-lock.json: $(BROWSER_DIR)/package.json $(BROWSER_DIR)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { \
		apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nodejs npm; }
	cd $(BROWSER_DIR) && npm ci --no-audit --no-fund
	touch $@

-include tools/Makefile.tools

# Generated-input testing of the HTTP API (schemathesis from PyPI into target/fuzz-api/venv),
# against the real server; see tools/fuzz_api/run.sh and the README's "Generated-input testing".
.PHONY: fuzz-api
fuzz-api: $(ORT_LIB)
	$(CARGO) build --release --bin samserve
	tools/fuzz_api/run.sh
# cargo-fuzz targets (fuzz/, its own workspace; nightly toolchain and `cargo install
# cargo-fuzz`): each target runs FUZZ_SECONDS, one after another; see fuzz/run.sh.
FUZZ_SECONDS ?= 600
.PHONY: fuzz
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh

# Soak: SOAK_SECONDS (600) of mixed traffic against a fresh server with a 16 MiB cache
# (loadtest/src/soak.rs); fails on any 5xx, the cache gauge above its budget, or RSS above
# the documented bound. Report in target/soak/soak.json. SOAK_ARGS passes more flags.
SOAK_SECONDS ?= 600
.PHONY: soak
soak: $(ORT_LIB)
	$(CARGO) build --release --workspace
	target/release/samserve-loadtest soak --server-bin target/release/samserve \
		--duration $(SOAK_SECONDS) --out target/soak $(SOAK_ARGS)

# Hybrid decoding parity (needs tools/.venv): a server on a free loopback port, then the
# downloaded embedding + decoder.onnx in Python onnxruntime vs the server's masks.
# After the include: it uses the tools venv's variables.
hybrid-parity: $(ORT_LIB) $(TOOLS_STAMP)
	$(CARGO) build --release --bin samserve
	@port=$$($(TOOLS_PYTHON) -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'); \
	target/release/samserve --port $$port > target/hybrid-parity-server.log 2>&1 & pid=$$!; \
	$(TOOLS_PYTHON) tools/hybrid_parity.py --wait 60 --url http://127.0.0.1:$$port; rc=$$?; kill $$pid; exit $$rc
