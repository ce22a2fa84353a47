SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv deps test lint run bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed

# Everything the test suite needs: the venv (Python deps) and etcd (etcd-server), nats-server,
# openssl (TLS tests).
deps: venv
	@missing=""; command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing$$missing: run  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

test: venv deps
	PATH="$$PATH:/usr/sbin" $(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

run: venv
	$(PY) -m dynamo.run.local

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
