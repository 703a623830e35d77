# sipushd — build, run, test, benchmark.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= config/sipushd.yaml
# Debian tools the test suite drives: binary=package
DEB_TOOLS := sipp=sip-tester linphonec=linphone-cli redis-server=redis-server systemd-analyze=systemd

.PHONY: run test lint bench venv deb-tools clean

# The SIP stack, the pure core and the runtime's engine, server core and registrar service
# are compiled with mypyc (setup.py, sipushd/native.py) into .so files next to their
# sources; any change to them rebuilds. SIPUSHD_PURE=1 installs without compiling.
RUNTIME_COMPILED := sipushd/runtime/engine.py sipushd/runtime/registrar.py sipushd/runtime/server.py
COMPILED := $(wildcard sipushd/sip/*.py sipushd/core/*.py) $(RUNTIME_COMPILED)
EXTENSIONS := sipushd/sip/*.so sipushd/core/*.so sipushd/runtime/*.so *__mypyc.*.so

$(VENV)/.installed: pyproject.toml setup.py $(COMPILED)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	rm -f $(EXTENSIONS)
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

run: venv
	$(VENV)/bin/sipushd run --config $(CONFIG)

deb-tools:
	@missing=""; for pair in $(DEB_TOOLS); do \
	  bin=$${pair%%=*}; pkg=$${pair#*=}; \
	  command -v $$bin >/dev/null 2>&1 || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (tests that need them are skipped)"; \
	  fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check sipushd tests benchmarks setup.py
	$(VENV)/bin/ruff format --check sipushd tests benchmarks setup.py
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: venv deb-tools lint
	$(VENV)/bin/pytest -q

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
	rm -f $(EXTENSIONS)
