# samserve: `make run` builds and serves; `make test` runs the whole suite.
# Both fetch ONNX Runtime themselves (the PyPI onnxruntime wheel's shared library).

ORT_VERSION ?= 1.31.1
ORT_DIR     := .ort
ORT_LIB     := $(ORT_DIR)/lib/libonnxruntime.so
PYTHON      ?= python3
CARGO       ?= cargo

export ORT_DYLIB_PATH := $(CURDIR)/$(ORT_LIB)

.PHONY: run build test ort fmt lint openapi bench clean

run: $(ORT_LIB)
	$(CARGO) run --release --bin samserve -- $(ARGS)

build: $(ORT_LIB)
	$(CARGO) build --release

test: $(ORT_LIB)
	$(CARGO) test --release --all-targets

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
	$(CARGO) clippy --all-targets -- -D warnings

clean:
	$(CARGO) clean
	rm -rf $(ORT_DIR)

-include tools/Makefile.tools
