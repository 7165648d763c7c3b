"""A pod's container run by a real OCI runtime (podman + runc), as the manifest says.

``pod_run_args`` turns a rendered pod template (the DaemonSet's, the Deployment's) into the
``podman run`` options a kubelet would give runc: user, capabilities, no_new_privs, read-only
root, seccomp and AppArmor, host namespaces, volumes, environment, memory limit. It is strict:
a field it cannot reproduce fails the test instead of being silently dropped, so "run with the
manifest's security context" stays true when the manifest changes.

The pod's network namespace is one the test made (``ip netns add``), as CNI makes one per
pod; the test reaches the pod's ports from inside it (``get_in``), never through the host.
``PodContainer`` runs one container in the foreground (``podman run``) and stops it the way
the kubelet does: SIGTERM through the runtime to the container's first process.
"""

from __future__ import annotations

import json
import re
import resource
import signal
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tests.support.netns import in_netns
from tests.support.process import LoggedProcess, http_get

# runc: what containerd runs on a node. crun 1.8 (Debian 12) refuses hosts whose cgroup v2
# hierarchy has controllers while cgroup v1 is mounted (hybrid), which CI machines can be.
PODMAN = ("podman", "--runtime", "runc")
# The fields the translation knows: those it reproduces, and those that decide nothing about
# the container's process (scheduling, API access) or that the test acts on itself: probes
# are its readiness signal, ports are reached in the pod's namespace, the termination grace is
# how long it waits after SIGTERM, imagePullPolicy is always --pull=never (no registry here).
POD_FIELDS = {"hostNetwork", "hostPID", "hostIPC", "securityContext", "containers", "volumes"}
POD_FIELDS |= {"serviceAccountName", "tolerations", "terminationGracePeriodSeconds"}
CONTAINER_FIELDS = {"securityContext", "env", "resources", "volumeMounts", "args", "command"}
CONTAINER_FIELDS |= {
    "name",
    "image",
    "imagePullPolicy",
    "ports",
    "startupProbe",
    "readinessProbe",
    "livenessProbe",
}
POD_SECURITY = {"seccompProfile", "appArmorProfile", "runAsUser", "runAsGroup", "runAsNonRoot"}
CONTAINER_SECURITY = POD_SECURITY | {
    "privileged",
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "capabilities",
}
Obj = dict[str, Any]


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """One podman command; raises with its stderr when ``check`` and it fails."""
    proc = subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def image_config(image: str) -> Obj:
    """The image's OCI config (User, Entrypoint, Env...) from local storage."""
    return json.loads(podman("image", "inspect", "--format", "{{json .Config}}", image).stdout)


def sandbox_limits() -> list[str]:
    """podman asks runc for RLIMIT_NOFILE/NPROC of 1048576; without CAP_SYS_RESOURCE (outside
    this sandbox's bounding set) runc cannot raise a hard limit, so the container gets the
    limits podman itself runs with, as a container on a node inherits containerd's."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = min(resource.getrlimit(resource.RLIMIT_NPROC)[1], 32768)  # podman lowers its own to this
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]


def _unknown(what: str, fields: Mapping[str, Any], known: set[str]) -> None:
    extra = set(fields) - known
    assert not extra, f"{what}: {sorted(extra)} not reproduced by tests/support/container.py: teach it"


def security_args(pod: Obj, container: Obj, image: str) -> list[str]:
    """The merged pod and container securityContext, as podman options."""
    psc, csc = pod.get("securityContext", {}), container.get("securityContext", {})
    _unknown("pod securityContext", psc, POD_SECURITY)
    _unknown("container securityContext", csc, CONTAINER_SECURITY)
    sc = {**psc, **csc}  # the container's own settings win, as in Kubernetes
    args: list[str] = []
    user = sc.get("runAsUser", image_config(image).get("User") or 0)
    uid = int(str(user).split(":")[0])
    if sc.get("runAsNonRoot"):
        assert uid != 0, "runAsNonRoot with uid 0: the kubelet would refuse to start this container"
    args += ["--user", f"{uid}:{sc['runAsGroup']}" if "runAsGroup" in sc else str(user)]
    if sc.get("privileged"):
        args.append("--privileged")
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]  # podman's extra tmpfs mounts: not in a pod
    caps = sc.get("capabilities", {})
    _unknown("capabilities", caps, {"add", "drop"})
    args += [a for c in caps.get("drop", []) for a in ("--cap-drop", c if c == "ALL" else f"CAP_{c}")]
    args += [a for c in caps.get("add", []) for a in ("--cap-add", f"CAP_{c}")]
    args += profile_args("seccomp", sc.get("seccompProfile"))
    args += profile_args("apparmor", sc.get("appArmorProfile"))
    return args


def profile_args(kind: str, profile: Obj | None) -> list[str]:
    """seccompProfile / appArmorProfile → --security-opt; RuntimeDefault is the runtime's own."""
    if not profile or profile["type"] == "RuntimeDefault":
        return []
    if profile["type"] == "Unconfined":
        return ["--security-opt", f"{kind}=unconfined"]
    raise AssertionError(f"{kind} profile {profile} is not reproduced here (Localhost needs the node's file)")


def namespace_args(pod: Obj, netns: str) -> list[str]:
    """hostNetwork/hostPID/hostIPC; otherwise the pod's own namespaces (network: ``netns``)."""
    _unknown("pod", pod, POD_FIELDS)
    args = ["--network", "host" if pod.get("hostNetwork") else f"ns:/run/netns/{netns}"]
    if pod.get("hostPID"):
        args += ["--pid", "host"]
    if pod.get("hostIPC"):
        args += ["--ipc", "host"]
    return args


def volume_args(pod: Obj, container: Obj, scratch: Path, config_maps: Mapping[str, Obj]) -> list[str]:
    """Each volumeMount: hostPath as a bind, emptyDir as a fresh directory, configMap as its files."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    args = []
    for m in container.get("volumeMounts", []):
        _unknown("volumeMount", m, {"name", "mountPath", "readOnly"})
        v = volumes[m["name"]]
        if "hostPath" in v:
            src = Path(v["hostPath"]["path"])
            assert v["hostPath"].get("type") != "Directory" or src.is_dir(), (
                f"hostPath {src} is not a directory"
            )
        elif "emptyDir" in v:  # sizeLimit is enforced by eviction, not by the mount
            src = scratch / f"emptydir-{m['name']}"
            src.mkdir(parents=True)
        elif "configMap" in v:
            src = scratch / f"configmap-{m['name']}"
            src.mkdir(parents=True)
            for key, text in config_maps[v["configMap"]["name"]]["data"].items():
                (src / key).write_text(text)
                (src / key).chmod(0o644)  # the kubelet's defaultMode
        else:
            raise AssertionError(f"volume {v} is not reproduced by tests/support/container.py")
        ro = ",ro" if m.get("readOnly") else ""
        args += ["--mount", f"type=bind,src={src},dst={m['mountPath']}{ro}"]
    return args


def env_args(container: Obj, node_name: str) -> list[str]:
    """env values; fieldRef spec.nodeName is the node's name (``node_name``)."""
    args = []
    for e in container.get("env", []):
        if "value" in e:
            value = e["value"]
        else:
            assert e["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}, e
            value = node_name
        args += ["--env", f"{e['name']}={value}"]
    return args


def resource_args(container: Obj) -> list[str]:
    """limits.memory as the container's memory limit (requests only schedule)."""
    limits = container.get("resources", {}).get("limits", {})
    _unknown("resources.limits", limits, {"memory"})
    if "memory" not in limits:
        return []
    number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", limits["memory"]).groups()
    return ["--memory", f"{number}{unit[0].lower()}"]


def pod_run_args(
    pod: Obj, container: Obj, *, netns: str, scratch: Path, node_name: str, config_maps: Mapping[str, Obj]
) -> list[str]:
    """Every podman option the pod template implies for ``container`` (the image not included)."""
    _unknown("container", container, CONTAINER_FIELDS)
    args = [*namespace_args(pod, netns), *security_args(pod, container, container["image"])]
    args += volume_args(pod, container, scratch, config_maps)
    args += env_args(container, node_name) + resource_args(container)
    if "command" in container:
        args += ["--entrypoint", json.dumps(container["command"])]
    return args


class PodContainer(LoggedProcess):
    """``podman run`` of one container in the foreground (its output is the log)."""

    def __init__(self, name: str, run_args: list[str], image: str, argv: list[str], netns: str, log: Path):
        self.container = name
        self.netns = netns
        super().__init__(
            [
                *PODMAN,
                "run",
                "--rm",
                "--name",
                name,
                "--pull=never",
                *sandbox_limits(),
                *run_args,
                image,
                *argv,
            ],
            log,
            name=name,
        )

    def get(self, port: int, path: str, timeout: float = 10.0) -> bytes:
        """GET http://127.0.0.1:port/path from inside the pod's network namespace."""
        return get_in(self.netns, f"http://127.0.0.1:{port}{path}", timeout)

    def wait_http(self, port: int, path: str, timeout: float) -> bytes:
        """The first 200 answer from the pod's ``port``/``path`` (a probe's signal)."""
        (body,) = self.wait_until(
            lambda: (self.get(port, path, 2),), timeout, f"200 from :{port}{path}", ignore=(OSError,)
        )
        return body

    def inspect(self, template: str) -> str:
        return podman("inspect", "--format", template, self.container).stdout.strip()

    @property
    def init_pid(self) -> int:
        """The host pid of the container's first process (the entrypoint)."""
        return int(self.inspect("{{.State.Pid}}"))

    def exec(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """``podman exec`` (like ``kubectl exec``): same namespaces, capabilities and user."""
        return podman("exec", self.container, *argv, check=False, timeout=timeout)

    def terminate(self, timeout: float) -> tuple[int, float]:
        """SIGTERM to the container's first process through the runtime, as the kubelet sends it;
        returns (exit code, seconds until the container was gone), SIGKILL after ``timeout``."""
        t0 = time.monotonic()
        podman("kill", "--signal", "TERM", self.container, check=False)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            podman("kill", "--signal", "KILL", self.container, check=False)
            rc = self.proc.wait(30)
        return rc, time.monotonic() - t0

    def remove(self) -> None:
        if self.running:
            self.stop(timeout=10, sig=signal.SIGTERM)
        podman("rm", "--force", "--ignore", self.container, check=False)


def get_in(netns: str, url: str, timeout: float = 10.0) -> bytes:
    """An HTTP GET whose socket lives in ``netns`` (this thread enters it for the call)."""
    with in_netns(netns):
        return http_get(url, timeout)
