# usher: `make demo` and `make test` work on a fresh machine; each sets up .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3.13 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The hot path compiled with mypyc (src/usher/native.py lists the modules), built in place next
# to the sources. Rebuilt when any source changes: compiled code relies on the types of the
# modules it imports. Without a C compiler the build warns and usher runs pure.
COMPILED := $(VENV)/.compiled
SOURCES := $(shell find src/usher -name '*.py')
.PHONY: demo test test-compiled test-pure lint fmt docs screenshot clean system-tools bench-tools bench bench-algorithms bench-failover bench-tcp bench-state cluster-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(COMPILED): $(STAMP) setup.py $(SOURCES)
	$(BIN)/python setup.py --quiet build_ext --inplace
	touch $(COMPILED)

demo: $(COMPILED)
	$(BIN)/usher demo

# Two usher nodes and one Redis on this machine: what they share, and Redis killed under load.
cluster-demo: $(COMPILED) system-tools
	$(BIN)/python scripts/cluster_demo.py

# System tools the tests drive: Debian's Chromium (the dashboard's browser test), promtool, dig
# (the dns listener's tests), keepalived (the HA tests), etcd (discovery) and redis-server (the
# cluster tests start their own), nginx and haproxy (tests/test_bench.py checks the configs
# `make bench` gives them with `nginx -t` and `haproxy -c`), and h2load (nghttp2-client: the
# h2 scenario of `make bench`) and curl with HTTP/2 (the h2 tests and the bench checks).
system-tools:
	@missing=""; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	[ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
	[ -x /usr/bin/dig ] || missing="$$missing dnsutils"; \
	[ -x /usr/sbin/keepalived ] || missing="$$missing keepalived"; \
	[ -x /usr/bin/etcd ] || missing="$$missing etcd-server"; \
	[ -x /usr/bin/redis-server ] || missing="$$missing redis-server"; \
	[ -x /usr/sbin/nginx ] || missing="$$missing nginx"; \
	[ -x /usr/sbin/haproxy ] || missing="$$missing haproxy"; \
	[ -x /usr/bin/h2load ] || missing="$$missing nghttp2-client"; \
	[ -x /usr/bin/curl ] || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (apt-get)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# What `make bench` and the other benchmarks drive besides: wrk (the load), nginx's stream
# module (its tcp scenario). Not needed by the tests.
bench-tools: system-tools
	@missing=""; \
	[ -x /usr/bin/wrk ] || missing="$$missing wrk"; \
	[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing="$$missing libnginx-mod-stream"; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (apt-get)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# The suite twice: on the compiled hot path, then on the same sources uncompiled (USHER_PURE=1).
# Each run is in two parts. Most tests wait on sockets, timers and the usher processes they
# start (one run used about half a core), so three pytest-xdist processes share the two cores
# of CI: a file's tests stay in one process (--dist loadfile), so a module-scoped fixture
# starts its usher processes once. Then the tests marked `serial` (tests/conftest.py, SERIAL:
# they measure latency or rates against bounds that hold on a quiet machine) run alone.
PYTEST_PARALLEL := -n 3 --dist loadfile -m "not serial"
PYTEST_SERIAL := -m serial

test: test-compiled test-pure
	$(BIN)/python scripts/gen_config_reference.py --check

test-compiled: $(COMPILED) system-tools
	$(BIN)/usher version
	$(BIN)/python -m pytest -q $(PYTEST_PARALLEL)
	$(BIN)/python -m pytest -q $(PYTEST_SERIAL)

test-pure: $(COMPILED) system-tools
	USHER_PURE=1 $(BIN)/usher version
	USHER_PURE=1 $(BIN)/python -m pytest -q $(PYTEST_PARALLEL)
	USHER_PURE=1 $(BIN)/python -m pytest -q $(PYTEST_SERIAL)

lint: $(STAMP)
	$(BIN)/ruff check setup.py src tests scripts bench examples
	$(BIN)/ruff format --check setup.py src tests scripts bench examples
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format setup.py src tests scripts bench examples
	$(BIN)/ruff check --fix setup.py src tests scripts bench examples

# usher against nginx and HAProxy (docs/performance.md). Options: make bench ARGS="--rounds 5".
bench: $(COMPILED) bench-tools
	$(BIN)/python bench/proxies.py $(ARGS)

bench-algorithms: $(COMPILED) bench-tools
	$(BIN)/python bench/algorithms.py

bench-failover: $(COMPILED) bench-tools
	$(BIN)/python bench/failover.py

# Cost per operation of the state shared by the workers (docs/workers.md).
bench-state: $(COMPILED) bench-tools
	$(BIN)/python bench/state.py

# TCP bulk transfer: usher plain vs splice vs HAProxy mode tcp.
bench-tcp: $(COMPILED) bench-tools
	$(BIN)/python bench/tcp.py

docs: $(STAMP)
	$(BIN)/python scripts/gen_config_reference.py

# Refreshes docs/dashboard.png, the README's picture, from the browser test.
screenshot: $(COMPILED) system-tools
	USHER_SCREENSHOT=1 $(BIN)/pytest -q tests/admin/test_dashboard.py -k screenshot

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
	find src -name '*.so' -delete
