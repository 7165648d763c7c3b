# otel-netlat benchmark — included by the top-level Makefile (needs its `install` target).
#   make bench            full run, ~5 min: bench/results/latest.json + latest.md
#   make bench QUICK=1    smoke run, < 60 s: bench/results/quick.json + quick.md
# Needs root: it loads BPF programs and makes two network namespaces (removed afterwards).
BENCH_PY   ?= $(or $(VENV),.venv)/bin/python
BENCH_ARGS ?=

.PHONY: bench

## bench: what the agent costs per packet, to throughput, CPU, memory and scrapes (bench/README.md)
bench: install
	$(BENCH_PY) -m bench.run $(if $(filter-out 0,$(QUICK)),--quick) $(BENCH_ARGS)

.PHONY: soak
SOAK_MINUTES ?= 30

## soak: the agent for SOAK_MINUTES (30) under saturating load, OTLP with two Collector outages, Prometheus every second: bench/results/soak.json
soak: install collector
	$(BENCH_PY) -m bench.soak --minutes $(SOAK_MINUTES)
