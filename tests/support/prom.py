"""A real Prometheus server (Debian's ``prometheus``), scraping targets on loopback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.agent import free_port


class PrometheusServer:
    def __init__(
        self, targets: list[str], workdir: Path, interval: str = "1s", config: dict | None = None
    ) -> None:
        """Scrape ``targets`` every ``interval``, or run with a full ``config`` given by the test."""
        if config is None:
            config = {
                "global": {"scrape_interval": interval, "evaluation_interval": interval},
                "scrape_configs": [
                    {"job_name": f"t{i}", "static_configs": [{"targets": [t]}]} for i, t in enumerate(targets)
                ],
            }
        self._start(config, workdir)

    def _start(self, config: dict, workdir: Path) -> None:
        binary = shutil.which("prometheus")
        if not binary:
            pytest.fail(
                "the prometheus server is not installed (apt-get install prometheus; make install does)"
            )
        self.port = free_port()
        path = workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "w")  # noqa: SIM115 — closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict]:
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]["result"]

    def wait_for(self, expr: str, predicate, timeout: float = 30.0) -> list[dict]:
        """Query until ``predicate(result)`` holds (scrapes are asynchronous)."""
        t0 = time.monotonic()
        result: list[dict] = []
        while time.monotonic() - t0 < timeout:
            result = self.query(expr)
            if predicate(result):
                return result
            time.sleep(0.5)
        raise AssertionError(f"{expr} never satisfied the condition; last result {result}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def start_prometheus(tmp_path) -> Iterator:
    servers: list[PrometheusServer] = []

    def start(targets: list[str], interval: str = "1s") -> PrometheusServer:
        d = tmp_path / f"prom-{len(servers)}"
        d.mkdir()
        server = PrometheusServer(targets, d, interval)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.stop()
