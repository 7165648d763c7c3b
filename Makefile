# otel-netlat — every target does its own set-up first (Debian 12, as root).
SHELL := /bin/bash
VENV  ?= .venv
PY    := $(VENV)/bin/python
ARGS  ?=
PYTEST_ARGS ?=

.PHONY: install run check watch test lint collector stack clean

## install: Debian packages, the .venv (sees BCC) and the package with its test extras; quick when done
install:
	@scripts/install.sh dev

## run: the agent on its defaults (Prometheus on :2112); extra flags via ARGS="..."
run: install
	$(VENV)/bin/otel-netlat run $(ARGS)

## check: what this kernel allows (privileges, BTF, tracefs, stages)
check: install
	$(VENV)/bin/otel-netlat check $(ARGS)

## watch: live per-stage histograms in the terminal
watch: install
	$(VENV)/bin/otel-netlat watch $(ARGS)

## collector: build the OpenTelemetry Collector distribution into build/ (cached)
collector:
	@collector/build.sh

## stack: agent + Collector + Prometheus (:9090) on this machine, in the foreground; Ctrl-C stops all
stack: install collector
	scripts/stack.sh $(ARGS)

## test: every test (kernel, namespaces, Prometheus, Collector); needs root
test: install collector image
	$(VENV)/bin/ruff check otel_netlat tests bench scripts
	$(VENV)/bin/ruff format --check otel_netlat tests bench scripts
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check otel_netlat tests bench scripts

clean:
	rm -rf build .pytest_cache .ruff_cache

include bench/bench.mk
include deploy/deploy.mk
-include scripts/vm/kernels.mk
-include scripts/cluster/cluster.mk
