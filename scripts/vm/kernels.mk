# otel-netlat kernel matrix (included by the Makefile): `make test-kernels`.
# Boots every installed Debian cloud kernel (6.1, 6.12) under qemu's software CPU with the
# host root shared read-only and kernel headers hidden, and runs the kernel test subset
# (tracepoint stages, kprobe and fentry seed stages, IPv4+IPv6 exact counts over veth, BTF
# offsets vs bpftool) inside each. Results: build/vm-results/{junit-*.xml,log-*.txt,summary.txt}.
# KERNELS=6.1,6.12 limits the kernels; VM_TIMEOUT bounds each VM (seconds).
VM_TIMEOUT ?= 1500
KERNELS ?=

.PHONY: test-kernels
test-kernels: install
	@scripts/install-kernels.sh
	/usr/bin/python3 scripts/vm/test_kernels.py --timeout $(VM_TIMEOUT) $(if $(KERNELS),--kernels $(KERNELS))
