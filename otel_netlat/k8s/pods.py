"""Which pod owns an IP on this node, kept current from the Kubernetes API.

The agent sees packets, not pods: to name the pod behind a local address it keeps a map
pod IP → (namespace, name) for the pods scheduled on its own node (field selector
``spec.nodeName=<node>``, so the API server filters and the RBAC needed is only
get/list/watch pods). A background thread lists, then watches from the list's
resourceVersion, and re-lists whenever the watch cannot resume (410 Gone); failures back
off exponentially so a broken API server is not hammered by every node at once.

Raw JSON is read (``_preload_content=False``) instead of the client's typed models: only a
handful of fields matter, and owning the HTTP response lets :meth:`PodIndex.stop` interrupt
a watch that is blocked reading.

IPs are reused: a pod can be gone from the node while its ``DELETED`` event is still in
flight, and the CNI may already have handed its IP to a new pod. Every pod that reports an
IP *claims* it, and the owner is the best claimant (not terminating, then newest creation,
then most recently seen), so a late ``DELETED`` or a stale update of the old pod never
takes the IP away from the new one, whatever order the events arrive in.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


class PodIndexError(RuntimeError):
    """Pod attribution cannot start (e.g. not running inside a cluster)."""


@dataclass(frozen=True)
class _Pod:
    """What the index keeps of one pod: enough to name it and to rank IP claims."""

    uid: str
    namespace: str
    name: str
    ips: frozenset[str]
    terminating: bool
    created: str  # RFC 3339, UTC "Z": compares correctly as a string
    seen: int  # order in which the index first saw this pod

    def rank(self) -> tuple[bool, str, int]:
        return (not self.terminating, self.created, self.seen)


def _pod_ips(obj: dict[str, Any]) -> frozenset[str] | None:
    """The IPs a pod object names as its own, or None if it must not be indexed.

    hostNetwork pods share the node's IP, so naming it after one of them would be wrong;
    pods that finished (Succeeded/Failed) have released their IP.
    """
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in TERMINAL_PHASES:
        return None
    raw = [p.get("ip") for p in status.get("podIPs") or ()] + [status.get("podIP")]
    ips = {ip for ip in map(_canonical, raw) if ip}
    return frozenset(ips) or None


def _canonical(ip: str | None) -> str | None:
    """The form attribution looks up (compressed IPv6), or None for junk."""
    try:
        return str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        return None


class _State:
    """Pods by uid and the resulting IP → owner map; not thread-safe on its own."""

    def __init__(self) -> None:
        self.pods: dict[str, _Pod] = {}
        self.claims: dict[str, set[str]] = {}
        self.owner: dict[str, tuple[str, str]] = {}
        self._seen = 0

    def upsert(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        uid = meta.get("uid")
        if not uid:
            return
        ips = _pod_ips(obj)
        if ips is None:
            self.remove(uid)
            return
        old = self.pods.get(uid)
        if old is None:
            self._seen += 1
        pod = _Pod(
            uid=uid,
            namespace=meta.get("namespace", ""),
            name=meta.get("name", ""),
            ips=ips,
            terminating=bool(meta.get("deletionTimestamp")),
            created=meta.get("creationTimestamp") or "",
            seen=old.seen if old else self._seen,
        )
        self.pods[uid] = pod
        touched = set(ips)
        if old is not None:
            for ip in old.ips - ips:
                self.claims[ip].discard(uid)
            touched |= old.ips
        for ip in ips:
            self.claims.setdefault(ip, set()).add(uid)
        self._resolve(touched)

    def remove(self, uid: str) -> None:
        old = self.pods.pop(uid, None)
        if old is None:
            return
        for ip in old.ips:
            self.claims[ip].discard(uid)
        self._resolve(old.ips)

    def _resolve(self, ips: set[str] | frozenset[str]) -> None:
        for ip in ips:
            claimants = self.claims.get(ip)
            if not claimants:
                self.claims.pop(ip, None)
                self.owner.pop(ip, None)
                continue
            best = max((self.pods[u] for u in claimants), key=_Pod.rank)
            self.owner[ip] = (best.namespace, best.name)


class PodIndex:
    """Thread-safe pod IP → (namespace, name) for one node, fed by list + watch.

    ``ready`` turns true after the first complete list; until then :meth:`lookup` returns
    None for everything. ``errors`` counts failed API requests and error events (a
    self-metric: a growing value means attribution is stale); ``relists`` counts lists
    after the first, which a healthy watch needs only when the server expires it.
    """

    def __init__(
        self,
        api_client: Any,
        node_name: str,
        *,
        watch_timeout_s: int = 300,
        read_timeout_s: float = 360.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        list_page_size: int = 500,
    ) -> None:
        from kubernetes import client as k8s_client

        if not node_name:
            raise PodIndexError("pod attribution needs the node name (NODE_NAME from spec.nodeName)")
        self._api = k8s_client.CoreV1Api(api_client)
        self.node_name = node_name
        self._selector = f"spec.nodeName={node_name}"
        self._watch_timeout_s = watch_timeout_s
        self._read_timeout_s = read_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._page_size = list_page_size
        self._lock = threading.Lock()
        self._state = _State()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: Any = None
        self._rv: str | None = None
        self.errors = 0
        self.relists = 0

    @classmethod
    def from_cluster(cls, node_name: str, **kwargs: Any) -> PodIndex:
        """An index using the pod's service account; PodIndexError outside a cluster."""
        from kubernetes import client as k8s_client
        from kubernetes import config as k8s_config

        cfg = k8s_client.Configuration()
        try:
            k8s_config.load_incluster_config(client_configuration=cfg)
        except k8s_config.ConfigException as e:
            raise PodIndexError(f"pod attribution needs to run in a Kubernetes cluster: {e}") from None
        return cls(k8s_client.ApiClient(cfg), node_name, **kwargs)

    # ---- public API ----------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the first list completed (or timeout); returns ``ready``."""
        return self._ready.wait(timeout)

    def lookup(self, ip: str) -> tuple[str, str] | None:
        """(namespace, name) of the pod on this node that owns ``ip``, if any."""
        with self._lock:
            return self._state.owner.get(ip)

    def size(self) -> int:
        """Number of IPs currently mapped (for tests and diagnostics)."""
        with self._lock:
            return len(self._state.owner)

    def start(self) -> PodIndex:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="netlat-pod-index", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, interrupting a blocked watch read."""
        self._stop.set()
        resp = self._resp
        if resp is not None:
            # Best effort: if it fails, the read timeout ends the watch anyway.
            with contextlib.suppress(Exception):
                resp.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the loop --------------------------------------------------------------------

    def _run(self) -> None:
        delay = self._backoff_initial_s
        while not self._stop.is_set():
            try:
                if self._rv is None:
                    self._list()
                progressed = self._watch()
            except _Gone:
                self._rv = None
                self.relists += 1
                progressed = True  # an expired resourceVersion is routine: re-list at once
            except Exception as e:  # noqa: BLE001 - any API/network failure: back off, retry
                if self._stop.is_set():
                    break
                self.errors += 1
                log.warning("pod index: %s: %s", type(e).__name__, e)
                progressed = False
            if progressed:
                delay = self._backoff_initial_s
                continue
            self._stop.wait(delay)
            delay = min(delay * 2, self._backoff_max_s)

    def _list(self) -> None:
        state = _State()
        cont: str | None = None
        while True:
            kwargs: dict[str, Any] = {"field_selector": self._selector, "limit": self._page_size}
            if cont:
                kwargs["_continue"] = cont
            body = self._request(self._api.list_pod_for_all_namespaces, **kwargs)
            for obj in body.get("items") or ():
                state.upsert(obj)
            meta = body.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                break
        with self._lock:
            self._state = state
        self._rv = meta.get("resourceVersion")
        self._ready.set()

    def _request(self, func: Any, **kwargs: Any) -> dict[str, Any]:
        from kubernetes.client.exceptions import ApiException

        try:
            resp = func(_preload_content=False, _request_timeout=(10, self._read_timeout_s), **kwargs)
        except ApiException as e:
            if e.status == 410:
                raise _Gone() from None
            raise
        try:
            return json.loads(resp.data)
        finally:
            resp.release_conn()

    def _watch(self) -> bool:
        """Follow one watch connection; True if it delivered anything (no backoff needed)."""
        from kubernetes.client.exceptions import ApiException
        from kubernetes.watch.watch import iter_resp_lines

        try:
            resp = self._api.list_pod_for_all_namespaces(
                field_selector=self._selector,
                watch=True,
                resource_version=self._rv,
                allow_watch_bookmarks=True,
                timeout_seconds=self._watch_timeout_s,
                _preload_content=False,
                _request_timeout=(10, self._read_timeout_s),
            )
        except ApiException as e:
            if e.status == 410:
                raise _Gone() from None
            raise
        self._resp = resp
        got = False
        try:
            if self._stop.is_set():
                return True
            for line in iter_resp_lines(resp):
                if self._stop.is_set():
                    break
                self._event(json.loads(line))
                got = True
        except Exception:
            if self._stop.is_set():
                return True
            raise
        finally:
            self._resp = None
            resp.release_conn()
        return got

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Gone()
            raise PodIndexError(f"watch error event: {obj.get('code')} {obj.get('message', '')}")
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED"):
            with self._lock:
                self._state.upsert(obj)
        elif kind == "DELETED":
            with self._lock:
                self._state.remove((obj.get("metadata") or {}).get("uid", ""))
        elif kind != "BOOKMARK":
            log.debug("pod index: ignoring watch event %r", kind)
        if rv:
            self._rv = rv


class _Gone(Exception):
    """The resourceVersion expired (HTTP 410 or an ERROR event with code 410): re-list."""
