"""A real Prometheus server (Debian's ``prometheus``), scraping targets on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.agent import free_port
from tests.support.process import LoggedProcess, http_get
from tests.support.wait import poll_until


class PrometheusServer:
    def __init__(
        self,
        targets: list[str],
        workdir: Path,
        interval: str = "1s",
        config: dict | None = None,
        exemplar_storage: bool = False,
    ) -> None:
        """Scrape ``targets`` every ``interval``, or run with a full ``config`` given by the test.

        ``exemplar_storage`` keeps the exemplars of OpenMetrics scrapes (``query_exemplars``).
        """
        self.features = ["exemplar-storage"] if exemplar_storage else []
        if config is None:
            config = {
                "global": {"scrape_interval": interval, "evaluation_interval": interval},
                "scrape_configs": [
                    {"job_name": f"t{i}", "static_configs": [{"targets": [t]}]} for i, t in enumerate(targets)
                ],
            }
        self._start(config, workdir)

    def _start(self, config: dict, workdir: Path) -> None:
        """Start and wait for /-/ready (stopped again if it never gets there)."""
        binary = shutil.which("prometheus")
        if not binary:
            pytest.fail(
                "the prometheus server is not installed (apt-get install prometheus; make install does)"
            )
        self.port = free_port()
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.process = LoggedProcess(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                *(f"--enable-feature={f}" for f in self.features),
            ],
            workdir / "prometheus.log",
            name="prometheus",
        )
        try:
            self.process.wait_for_http(f"http://127.0.0.1:{self.port}/-/ready", timeout=30)
        except Exception:
            self.stop()
            raise

    @property
    def proc(self) -> subprocess.Popen:
        return self.process.proc

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        body = json.loads(http_get(url))
        assert body["status"] == "success", body
        return body["data"]["result"]

    def query_exemplars(self, expr: str, start: float, end: float) -> list[dict]:
        """``/api/v1/query_exemplars``: [{"seriesLabels": {...}, "exemplars": [{"labels", "value",
        "timestamp"}]}] of the series ``expr`` selects, for exemplars timed within [start, end]."""
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        url = f"http://127.0.0.1:{self.port}/api/v1/query_exemplars?" + urllib.parse.urlencode(params)
        body = json.loads(http_get(url))
        assert body["status"] == "success", body
        return body["data"]

    def wait_for(
        self, expr: str, predicate: Callable[[list[dict]], bool], timeout: float = 30.0
    ) -> list[dict]:
        """Query until ``predicate(result)`` holds (scrapes are asynchronous)."""
        seen: list[list[dict]] = [[]]

        def holds() -> tuple[list[dict]] | None:  # a tuple: an empty result may be what is wanted
            seen[0] = self.query(expr)
            return (seen[0],) if predicate(seen[0]) else None

        (result,) = poll_until(
            holds,
            timeout,
            f"{expr} to satisfy the condition",
            every=0.5,
            detail=lambda: f"last result {seen[0]}",
        )
        return result

    def stop(self) -> int:
        rc, _ = self.process.stop(timeout=10)
        return rc


@pytest.fixture
def start_prometheus(tmp_path) -> Iterator:
    servers: list[PrometheusServer] = []

    def start(targets: list[str], interval: str = "1s", exemplar_storage: bool = False) -> PrometheusServer:
        d = tmp_path / f"prom-{len(servers)}"
        d.mkdir()
        server = PrometheusServer(targets, d, interval, exemplar_storage=exemplar_storage)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
