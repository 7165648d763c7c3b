"""A scripted stand-in for the Kubernetes API server's pod list/watch, on loopback.

Tests drive the real ``kubernetes`` client against it, so what is exercised is the
client's HTTP handling (query parameters, chunked watch streams, 410 status) plus the
agent's list/watch/re-list logic — only the cluster is fake. The test holds the cluster
state: :meth:`FakeKubeAPI.add`/``modify``/``delete`` change pods, bump the
resourceVersion and push ``ADDED``/``MODIFIED``/``DELETED`` events to open watches (and
into a history a watch resumes from). Faults are scripted: :meth:`drop_watches` cuts watch
connections, :meth:`compact` makes old resourceVersions answer an ``ERROR`` 410 event
(like etcd compaction), :meth:`fail_next` answers the next request with an HTTP status.

Every pod object that enters the server goes through ``validate`` (the tests pass
``kubernetes_validate`` against a pinned schema), so hand-written pods stay realistic.
"""

from __future__ import annotations

import copy
import json
import queue
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.support.wait import poll_until

Obj = dict[str, Any]


def make_pod(
    name: str,
    ip: str | None,
    *,
    uid: str | None = None,
    namespace: str = "default",
    node: str = "node-a",
    host_network: bool = False,
    phase: str = "Running",
    created: str = "2025-01-01T00:00:00Z",
    deleting: bool = False,
    extra_ips: tuple[str, ...] = (),
) -> Obj:
    """A minimal Pod as the API server returns it (spec, status, metadata)."""
    meta: Obj = {
        "name": name,
        "namespace": namespace,
        "uid": uid or f"uid-{namespace}-{name}",
        "creationTimestamp": created,
        "labels": {"app": name},
    }
    if deleting:
        meta["deletionTimestamp"] = "2025-01-01T01:00:00Z"
        meta["deletionGracePeriodSeconds"] = 30
    spec: Obj = {
        "nodeName": node,
        "containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}],
        "restartPolicy": "Always",
    }
    if host_network:
        spec["hostNetwork"] = True
    status: Obj = {"phase": phase, "hostIP": "192.168.0.10", "hostIPs": [{"ip": "192.168.0.10"}]}
    if ip:
        status["podIP"] = ip
        status["podIPs"] = [{"ip": ip}] + [{"ip": x} for x in extra_ips]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


class _Watch:
    """One open watch connection: events are queued to it; ``drop`` ends it."""

    def __init__(self) -> None:
        self.events: queue.Queue[Obj] = queue.Queue()
        self.drop: str | None = None  # "clean" (terminating chunk) or "abrupt" (socket cut)


class FakeKubeAPI:
    """Serves ``GET /api/v1/pods`` (list and ``watch=true``) from a scripted pod set."""

    def __init__(self, validate: Callable[[Obj], None]) -> None:
        self.validate = validate
        self.pods: dict[str, Obj] = {}
        self.rv = 100
        self.history: list[tuple[int, Obj]] = []
        self.compacted_rv = 0
        self.held = False
        self.requests: list[dict[str, list[str]]] = []
        self._fail: list[tuple[str, int]] = []
        self._watches: list[_Watch] = []
        self._lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                api._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # ---- lifecycle -------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeKubeAPI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.drop_watches("abrupt")
        self._server.shutdown()
        self._server.server_close()

    # ---- cluster script --------------------------------------------------------------

    def _event(self, kind: str, pod: Obj) -> Obj:
        self.validate(pod)
        with self._lock:
            self.rv += 1
            pod = copy.deepcopy(pod)
            pod["metadata"]["resourceVersion"] = str(self.rv)
            uid = pod["metadata"]["uid"]
            if kind == "DELETED":
                self.pods.pop(uid, None)
            else:
                self.pods[uid] = pod
            event = {"type": kind, "object": pod}
            self.history.append((self.rv, event))
            if not self.held:
                for w in self._watches:
                    w.events.put(event)
        return pod

    def add(self, pod: Obj) -> Obj:
        return self._event("ADDED", pod)

    def modify(self, pod: Obj) -> Obj:
        return self._event("MODIFIED", pod)

    def delete(self, pod: Obj) -> Obj:
        return self._event("DELETED", pod)

    def seed(self, *pods: Obj) -> None:
        """Pods that exist before the agent starts (in the list, not in watch history)."""
        for pod in pods:
            self.add(pod)
        with self._lock:
            self.compacted_rv = self.rv

    def compact(self) -> None:
        """Expire every resourceVersion up to now: resuming watches get ERROR 410.

        The resourceVersion moves on too (other objects change in a real cluster), so a
        fresh list returns a version a watch can start from.
        """
        with self._lock:
            self.rv += 1
            self.compacted_rv = self.rv

    def hold(self, held: bool = True) -> None:
        """Stop (or resume) pushing new events to open watches; history still records them.

        With a drop afterwards, the only way for a client to see the held events is to
        resume from the resourceVersion it had (or to re-list).
        """
        with self._lock:
            self.held = held

    def fail_next(self, status: int, *, watch: bool) -> None:
        """Answer the next list (``watch=False``) or watch request with ``status``."""
        with self._lock:
            self._fail.append(("watch" if watch else "list", status))

    def drop_watches(self, how: str = "abrupt") -> None:
        """End every open watch: ``clean`` like a server timeout, ``abrupt`` mid-stream."""
        with self._lock:
            for w in self._watches:
                w.drop = how

    def open_watches(self) -> int:
        with self._lock:
            return len(self._watches)

    def watch_requests(self) -> list[dict[str, list[str]]]:
        return [q for q in self.requests if q.get("watch") == ["true"]]

    def list_requests(self) -> list[dict[str, list[str]]]:
        return [q for q in self.requests if q.get("watch") != ["true"]]

    # ---- HTTP ------------------------------------------------------------------------

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        q = parse_qs(url.query)
        with self._lock:
            self.requests.append(q)
        if url.path != "/api/v1/pods":
            self._status(h, 404, "NotFound", f"no route {url.path}")
            return
        watch = q.get("watch") == ["true"]
        with self._lock:
            fail = next((f for f in self._fail if f[0] == ("watch" if watch else "list")), None)
            if fail:
                self._fail.remove(fail)
        if fail:
            reason = "Expired" if fail[1] == 410 else "InternalError"
            self._status(h, fail[1], reason, "scripted failure")
            return
        node = _node_selector(q)
        if watch:
            self._watch(h, q, node)
        else:
            self._list(h, q, node)

    @staticmethod
    def _send_json(h: BaseHTTPRequestHandler, code: int, body: Obj) -> None:
        data = json.dumps(body).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _status(self, h: BaseHTTPRequestHandler, code: int, reason: str, message: str) -> None:
        self._send_json(h, code, _status_obj(code, reason, message))

    def _list(self, h: BaseHTTPRequestHandler, q: dict[str, list[str]], node: str | None) -> None:
        with self._lock:
            items = [p for p in self.pods.values() if node is None or p["spec"].get("nodeName") == node]
            rv = self.rv
        start = int(q.get("continue", ["0"])[0])
        limit = int(q.get("limit", ["0"])[0]) or len(items)
        page = items[start : start + limit]
        meta: Obj = {"resourceVersion": str(rv)}
        if start + limit < len(items):
            meta["continue"] = str(start + limit)
        self._send_json(h, 200, {"kind": "PodList", "apiVersion": "v1", "metadata": meta, "items": page})

    def _watch(self, h: BaseHTTPRequestHandler, q: dict[str, list[str]], node: str | None) -> None:
        since = int(q.get("resourceVersion", ["0"])[0] or 0)
        w = _Watch()
        with self._lock:
            expired = since < self.compacted_rv
            if not expired:
                for rv, event in self.history:
                    if rv > since:
                        w.events.put(event)
                self._watches.append(w)
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Transfer-Encoding", "chunked")
        h.end_headers()
        try:
            if expired:
                gone = _status_obj(410, "Expired", f"too old resource version: {since} ({self.compacted_rv})")
                _chunk(h, {"type": "ERROR", "object": gone})
                h.wfile.write(b"0\r\n\r\n")
                return
            while True:
                if w.drop == "abrupt":
                    h.close_connection = True
                    h.connection.shutdown(socket.SHUT_RDWR)
                    return
                if w.drop == "clean":
                    h.wfile.write(b"0\r\n\r\n")
                    return
                try:
                    event = w.events.get(timeout=0.02)
                except queue.Empty:
                    continue
                if node is None or event["object"]["spec"].get("nodeName") == node:
                    _chunk(h, event)
        except OSError:
            h.close_connection = True
        finally:
            with self._lock:
                if w in self._watches:
                    self._watches.remove(w)


def _chunk(h: BaseHTTPRequestHandler, event: Obj) -> None:
    data = json.dumps(event).encode() + b"\n"
    h.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
    h.wfile.flush()


def _status_obj(code: int, reason: str, message: str) -> Obj:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _node_selector(q: dict[str, list[str]]) -> str | None:
    for sel in q.get("fieldSelector", []):
        for term in sel.split(","):
            key, _, value = term.partition("=")
            if key == "spec.nodeName":
                return value
    return None


def wait_until(pred: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """Poll ``pred`` until true; fail with ``what`` after ``timeout`` seconds."""
    poll_until(pred, timeout, what, every=0.01)
