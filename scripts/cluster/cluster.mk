# otel-netlat on a real single-node Kubernetes (included by the Makefile): `make test-cluster`.
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy and CoreDNS
# built from Go modules (scripts/cluster/build.sh; cached under /var/cache/otel-netlat/cluster,
# linked into build/cluster/bin), Debian's containerd, runc and CNI plugins, all in a network
# namespace of their own; the agent and Collector images from `make image`, a pause image built
# here; deploy/kubernetes applied with kustomize; tests/cluster run against it; everything
# torn down after (scripts/cluster/node.py).

.PHONY: test-cluster cluster-build

## test-cluster: deploy/kubernetes on a real single-node Kubernetes made on this machine; needs root
test-cluster: install image cluster-build
	@scripts/cluster/images.sh $(IMAGE) $(COLLECTOR_IMAGE)
	NETLAT_CLUSTER=1 $(VENV)/bin/pytest tests/cluster $(PYTEST_ARGS)

## cluster-build: the cluster's Debian packages and binaries (cached)
cluster-build:
	@scripts/cluster/install.sh
	@scripts/cluster/build.sh
