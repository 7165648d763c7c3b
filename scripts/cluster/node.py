"""A real single-node Kubernetes on this machine: start it, load images, tear it down.

    python3 -m scripts.cluster.node      up (images from build/cluster/images) until Ctrl-C, then down

Order: network namespace → containerd → images → etcd → kube-apiserver →
kube-controller-manager + kube-scheduler → kubelet (node Ready) → kube-proxy + CoreDNS. Each
daemon runs in the node's network namespace and is awaited by a signal it gives (health
endpoint, log line, node condition), never by a sleep. ``down`` deletes every namespace's
workloads through the API, so that kubelet stops the pods (CNI releases their addresses and
namespaces), stops the daemons in reverse, then sweeps (scripts/cluster/cleanup.py).
"""

from __future__ import annotations

import contextlib
import fcntl
import http.client
import os
import shutil
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from scripts.cluster import cleanup, configs, network, pki
from scripts.cluster import layout as L
from tests.support.process import LoggedProcess

#: Namespaces the cluster makes itself; every other one is a workload to delete at teardown.
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
NO_PROXY = urllib.request.ProxyHandler({})
#: The binaries scripts/cluster/build.sh puts in build/cluster/bin that the node runs.
DAEMONS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
DAEMONS += ("coredns", "kubectl", "crictl")


class Node:
    """One cluster: ``up()``, then ``kubectl()``/``api_get()``, then ``down()`` (always)."""

    def __init__(self, layout: L.Layout | None = None, start_timeout: float = 300.0) -> None:
        self.layout = layout or L.Layout()
        self.timeout = start_timeout
        self.processes: list[LoggedProcess] = []
        self._lock: int | None = None
        self._made_host_dirs: tuple[Path, ...] = ()

    # --- clients ---------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        """kubectl as the cluster's admin; its stdout (a failure carries stderr)."""
        argv = [str(self.layout.binary("kubectl")), f"--kubeconfig={self.layout.kubeconfig('admin')}", *args]
        result = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout

    def api_get(self, path: str, timeout: float = 10.0) -> bytes:
        """GET ``path`` from the API server as admin (``/api/v1/.../proxy/...`` included)."""
        pki_dir = self.layout.pki
        context = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
        context.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
        opener = urllib.request.build_opener(NO_PROXY, urllib.request.HTTPSHandler(context=context))
        with opener.open(f"https://{L.NODE_IP}:{L.API_PORT}{path}", timeout=timeout) as r:
            return r.read()

    # --- up --------------------------------------------------------------------------
    def up(self, images: dict[str, tuple[str, Path]]) -> None:
        """Start everything, with ``images`` (``read_images()``) in containerd; on any failure
        what was started is torn down again."""
        self._take_lock()
        try:
            self._prepare()
            self._start_runtime(images)
            self._start_control_plane()
            self._start_kubelet()
            self._start_services()
        except BaseException:
            self.down()
            raise

    def _take_lock(self) -> None:
        self.layout.lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.layout.lock, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RuntimeError(
                f"another cluster is running on this machine ({self.layout.lock} is held)"
            ) from None
        self._lock = fd

    def _prepare(self) -> None:
        """Sweep a killed run's leftovers, then make certificates, configs, namespace, cgroups."""
        missing = [b for b in DAEMONS if not self.layout.binary(b).exists()]
        if missing:
            raise RuntimeError(
                f"{', '.join(missing)} missing in {self.layout.bin}: run scripts/cluster/build.sh"
            )
        if cleanup.leftovers(self.layout):
            cleanup.sweep(self.layout)
        network.check_free()
        self._made_host_dirs = tuple(d for d in L.HOST_DIRS if not d.exists())
        self.layout.logs.mkdir(parents=True)
        pki.make_pki(self.layout)
        network.create()
        cleanup.make_cgroup_roots()
        # kubelet mounts pod volumes in its own mount namespace: a shared mount carries them
        # to containerd's.
        kubelet = self.layout.kubelet
        kubelet.mkdir()
        network.run("mount", "--bind", str(kubelet), str(kubelet))
        network.run("mount", "--make-rshared", str(kubelet))

    def _start(self, name: str, argv: Sequence[str | Path]) -> LoggedProcess:
        process = LoggedProcess(argv, self.layout.logs / f"{name}.log", name=name, cwd=self.layout.state)
        self.processes.append(process)
        return process

    def _wait_http(self, process: LoggedProcess, url: str, context: ssl.SSLContext | None = None) -> None:
        handlers = [NO_PROXY] + ([urllib.request.HTTPSHandler(context=context)] if context else [])
        opener = urllib.request.build_opener(*handlers)

        def ok() -> bool:
            with opener.open(url, timeout=5) as r:
                return r.status == 200

        process.wait_until(
            ok, self.timeout, f"200 from {url}", every=0.5, ignore=(OSError, http.client.HTTPException)
        )

    def _start_runtime(self, images: dict[str, tuple[str, Path]]) -> None:
        config = configs.containerd_config(self.layout, images["pause"][0])
        configs.cni_config(self.layout)
        containerd = self._start("containerd", network.in_netns("containerd", "--config", config))
        containerd.wait_until(
            lambda: self._ctr("version", check=False).returncode == 0, 60, "containerd to answer"
        )
        for _ref, archive in images.values():
            self._ctr("images", "import", str(archive))

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        argv = ["ctr", "--address", str(self.layout.containerd_socket), "--namespace", "k8s.io", *args]
        result = subprocess.run(argv, capture_output=True, text=True)
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
        return result

    def _start_control_plane(self) -> None:
        b, p, s = self.layout.binary, self.layout.pki, self.layout.state
        etcd = self._start(
            "etcd",
            network.in_netns(
                b("etcd"), "--name=netlat", f"--data-dir={s / 'etcd'}",
                "--listen-client-urls=http://127.0.0.1:2379", "--advertise-client-urls=http://127.0.0.1:2379",
                "--listen-peer-urls=http://127.0.0.1:2380", "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=netlat=http://127.0.0.1:2380",
                # The data lives as long as the test: no fsync on a disk shared with other work.
                "--unsafe-no-fsync",
            ),
        )  # fmt: skip
        etcd.wait_for_line("ready to serve client requests", timeout=self.timeout)
        apiserver = self._start(
            "kube-apiserver", network.in_netns(b("kube-apiserver"), *apiserver_flags(self.layout))
        )
        context = ssl.create_default_context(cafile=str(p / "ca.crt"))
        context.load_cert_chain(str(p / "admin.crt"), str(p / "admin.key"))
        self._wait_http(apiserver, f"https://{L.NODE_IP}:{L.API_PORT}/readyz", context)
        unverified = ssl._create_unverified_context()  # their serving certificates are self-signed
        for name, port, user, extra in (
            ("kube-controller-manager", 10257, "controller-manager", controller_manager_flags(self.layout)),
            ("kube-scheduler", 10259, "scheduler", []),
        ):
            kubeconfig = self.layout.kubeconfig(user)
            process = self._start(
                name,
                network.in_netns(
                    b(name), f"--kubeconfig={kubeconfig}", f"--authentication-kubeconfig={kubeconfig}",
                    f"--authorization-kubeconfig={kubeconfig}", f"--bind-address={L.NODE_IP}",
                    "--leader-elect=false", *extra,
                ),
            )  # fmt: skip
            self._wait_http(process, f"https://{L.NODE_IP}:{port}/healthz", unverified)

    def _start_kubelet(self) -> None:
        covers = configs.sysctl_covers(self.layout)
        # Its own mount namespace: the kernel tunables it would set are covered by files
        # holding the values it wants, /var/log/containers (fixed in kubelet) is a private
        # tmpfs, and / and /proc are made private there first so no cover reaches the host.
        script = ["set -e", "mount --make-private /", "mount --make-rprivate /proc"]
        script += [f"mount --bind {path} /proc/sys/{name}" for name, path in covers.items()]
        script += ["mount -t tmpfs -o mode=0755 kubelet-log /var/log", 'exec "$@"']
        own_mounts = ["unshare", "--mount", "--propagation", "unchanged", "--", "sh", "-c", "\n".join(script)]
        kubelet = self._start(
            "kubelet",
            [
                *own_mounts, "kubelet",
                *network.in_netns(
                    self.layout.binary("kubelet"), f"--config={configs.kubelet_config(self.layout)}",
                    f"--kubeconfig={self.layout.kubeconfig('kubelet')}", f"--root-dir={self.layout.kubelet}",
                    f"--hostname-override={L.NODE_NAME}", f"--node-ip={L.NODE_IP}",
                ),
            ],
        )  # fmt: skip
        self._wait_http(kubelet, f"http://{L.NODE_IP}:10248/healthz")
        kubelet.wait_until(self._node_ready, self.timeout, f"node {L.NODE_NAME} Ready", every=1)

    def _node_ready(self) -> bool:
        out = self.kubectl(
            "get",
            "node",
            L.NODE_NAME,
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
            check=False,
        )
        return out.strip() == "True"

    def _start_services(self) -> None:
        proxy = self._start(
            "kube-proxy",
            network.in_netns(
                self.layout.binary("kube-proxy"), f"--config={configs.kube_proxy_config(self.layout)}"
            ),
        )
        self._wait_http(proxy, f"http://{L.NODE_IP}:10256/healthz")
        coredns = self._start(
            "coredns", network.in_netns(self.layout.binary("coredns"), "-conf", configs.corefile(self.layout))
        )
        self._wait_http(coredns, f"http://{L.NODE_IP}:8181/ready")

    # --- down ------------------------------------------------------------------------
    def down(self) -> list[str]:
        """Stop everything and remove what the cluster made; returns what could not be removed."""
        self._keep_logs(self.layout.state / "pod-logs", "pods")  # before the pods go
        try:
            running = {p.name for p in self.processes if p.running}
            if {"kube-apiserver", "kubelet"} <= running:
                self._drain()
        finally:
            for process in reversed(self.processes):
                process.stop(timeout=30)
            self.processes.clear()
            self._keep_logs(self.layout.logs, "node")
            cleanup.sweep(self.layout, self._made_host_dirs)
            left = cleanup.leftovers(self.layout)
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None
        return left

    def _keep_logs(self, source: Path, name: str) -> None:
        """Logs outlive the state directory, in build/cluster/logs/NAME."""
        kept = L.REPO / "build" / "cluster" / "logs" / name
        shutil.rmtree(kept, ignore_errors=True)
        if source.is_dir():
            shutil.copytree(source, kept, symlinks=True)

    def _drain(self) -> None:
        """Delete the workloads, let kubelet stop their pods, then remove every sandbox."""
        names = self.kubectl(
            "get", "namespaces", "-o", "jsonpath={.items[*].metadata.name}", check=False
        ).split()
        workloads = [n for n in names if n not in SYSTEM_NAMESPACES]
        if workloads:
            self.kubectl(
                "delete", "namespace", "--wait=true", "--timeout=120s", *workloads, check=False, timeout=150
            )
        self.kubectl("delete", "pods", "--all", "-A", "--wait=true", "--timeout=60s", check=False, timeout=90)
        crictl = [
            str(self.layout.binary("crictl")),
            f"--runtime-endpoint=unix://{self.layout.containerd_socket}",
        ]
        subprocess.run([*crictl, "rmp", "--force", "--all"], capture_output=True, timeout=120)


IMAGES = L.REPO / "build" / "cluster" / "images"


def read_images(directory: Path = IMAGES) -> dict[str, tuple[str, Path]]:
    """name → (reference, archive) as scripts/cluster/images.sh wrote them (agent, collector, pause)."""
    refs = directory / "refs"
    if not refs.exists():
        raise RuntimeError(f"{refs} is missing: make test-cluster builds and saves the images")
    images = {}
    for line in refs.read_text().splitlines():
        name, ref = line.split()
        images[name] = (ref, directory / f"{name}.tar")
    return images


def apiserver_flags(layout: L.Layout) -> list[str]:
    p = layout.pki
    return [
        "--etcd-servers=http://127.0.0.1:2379",
        f"--advertise-address={L.NODE_IP}",
        "--bind-address=0.0.0.0",
        f"--secure-port={L.API_PORT}",
        f"--service-cluster-ip-range={L.SERVICE_CIDR}",
        f"--cert-dir={layout.state / 'apiserver'}",
        f"--tls-cert-file={p / 'apiserver.crt'}",
        f"--tls-private-key-file={p / 'apiserver.key'}",
        f"--client-ca-file={p / 'ca.crt'}",
        f"--kubelet-client-certificate={p / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={p / 'apiserver-kubelet-client.key'}",
        "--kubelet-preferred-address-types=InternalIP",
        f"--service-account-issuer=https://kubernetes.default.svc.{L.CLUSTER_DOMAIN}",
        f"--service-account-key-file={p / 'sa.pub'}",
        f"--service-account-signing-key-file={p / 'sa.key'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
    ]


def controller_manager_flags(layout: L.Layout) -> list[str]:
    p = layout.pki
    return [
        f"--service-account-private-key-file={p / 'sa.key'}",
        f"--root-ca-file={p / 'ca.crt'}",
        "--use-service-account-credentials=true",
        f"--cluster-signing-cert-file={p / 'ca.crt'}",
        f"--cluster-signing-key-file={p / 'ca.key'}",
        f"--service-cluster-ip-range={L.SERVICE_CIDR}",
    ]


def main() -> int:
    node = Node()
    node.up(read_images())
    print(f"cluster up: kubectl --kubeconfig={node.layout.kubeconfig('admin')} get nodes; Ctrl-C stops it")
    with contextlib.suppress(KeyboardInterrupt):
        node.processes[0].proc.wait()
    left = node.down()
    print("cluster down" + (f"; left behind: {left}" if left else ""))
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main())
