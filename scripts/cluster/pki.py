"""The cluster's certificates and kubeconfigs: one CA, one identity per component.

Each component authenticates as the user Kubernetes' bootstrap RBAC expects of it
(``system:kube-controller-manager``, ``system:node:<node>`` in ``system:nodes``...), so the
API server runs with ``--authorization-mode=Node,RBAC`` as a real control plane does, and the
agent's access is decided by the ClusterRole deploy/kubernetes ships and nothing broader.
Keys are ECDSA P-256 (fast to make); everything is valid for one day.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from scripts.cluster import layout as L

VALID = datetime.timedelta(days=1)

#: file name → (common name, organizations): the client identities of the control plane.
CLIENTS = {
    "admin": ("otel-netlat-admin", ["system:masters"]),
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ["system:masters"]),
    "controller-manager": ("system:kube-controller-manager", []),
    "scheduler": ("system:kube-scheduler", []),
    "kubelet": (f"system:node:{L.NODE_NAME}", ["system:nodes"]),
    "kube-proxy": ("system:kube-proxy", []),
}


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)


def _name(cn: str, orgs: list[str]) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in orgs]
    return x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALID)
    )


class Authority:
    """A CA that writes ``<name>.crt``/``<name>.key`` pairs into ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.key = _key()
        self.subject = _name("otel-netlat-cluster-ca", [])
        self.cert = (
            _builder(self.subject, self.subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .sign(self.key, hashes.SHA256())
        )
        self._write("ca", self.cert, self.key)

    def _write(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        (self.directory / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(self.directory / f"{name}.key", key)

    def issue(self, name: str, cn: str, orgs: list[str], *, ips=(), dns=()) -> None:
        """A leaf certificate: a server's when it has names (``ips``/``dns``), else a client's."""
        key = _key()
        server = bool(ips or dns)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(_name(cn, orgs), self.subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        self._write(name, builder.sign(self.key, hashes.SHA256()), key)


def kubeconfig(layout: L.Layout, user: str) -> Path:
    """A kubeconfig for the client certificate ``user`` against the API server on the node."""
    pki = layout.pki
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "netlat",
                "cluster": {
                    "server": f"https://{L.NODE_IP}:{L.API_PORT}",
                    "certificate-authority": str(pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate": str(pki / f"{user}.crt"),
                    "client-key": str(pki / f"{user}.key"),
                },
            }
        ],
        "contexts": [{"name": "netlat", "context": {"cluster": "netlat", "user": user}}],
        "current-context": "netlat",
    }
    path = layout.kubeconfig(user)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def make_pki(layout: L.Layout) -> None:
    """CA, API server serving certificate, client identities, service-account key pair, kubeconfigs."""
    ca = Authority(layout.pki)
    domain = L.CLUSTER_DOMAIN
    ca.issue(
        "apiserver",
        "kube-apiserver",
        [],
        ips=[L.NODE_IP, L.API_SERVICE_IP, "127.0.0.1"],
        dns=[
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            f"kubernetes.default.svc.{domain}",
        ],
    )
    for name, (cn, orgs) in CLIENTS.items():
        ca.issue(name, cn, orgs)
    sa = _key()
    _write_key(layout.pki / "sa.key", sa)
    (layout.pki / "sa.pub").write_bytes(
        sa.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    for name in CLIENTS:
        if name != "apiserver-kubelet-client":
            kubeconfig(layout, name)
