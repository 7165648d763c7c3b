"""A subprocess for tests: started with its output in a file, awaited by signal, stopped cleanly.

The agent, ``watch``, Prometheus and the Collector are all run this way. Readiness is a
signal the process gives (a log line, an HTTP endpoint answering 200), never a sleep; a
process that dies or stays silent fails the wait with the tail of its own log, which is
what explains why. Stopping is SIGTERM, a bounded wait, then SIGKILL.

Fixture: ``start_process`` (a factory; every process it started is stopped at teardown).
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import pytest

from tests.support.wait import poll_until

REPO = Path(__file__).resolve().parents[2]
# Loopback only: never route a test's requests through an http_proxy from the environment.
LOOPBACK = urllib.request.build_opener(urllib.request.ProxyHandler({}))

T = TypeVar("T")


def http_get(url: str, timeout: float = 10.0) -> bytes:
    """The body of a 200 answer; raises OSError (HTTPError included) otherwise."""
    with LOOPBACK.open(url, timeout=timeout) as r:
        return r.read()


class LoggedProcess:
    """One subprocess whose stdout and stderr go to ``log_path``.

    With ``stdout_path``, stdout goes there and only stderr to the log (``watch`` keeps its
    histograms on stdout and says what it is doing on stderr). ``env`` is the whole
    environment (None: this process's). ``append`` keeps an earlier run's log (a restart).
    """

    def __init__(
        self,
        argv: Sequence[str | Path],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path = REPO,
        stdout_path: Path | None = None,
        append: bool = False,
        name: str | None = None,
    ) -> None:
        self.name = name or Path(str(argv[0])).name
        self.log_path = log_path
        self.stdout_path = stdout_path
        # The child gets its own descriptors: these handles can close once it has started.
        with open(log_path, "a" if append else "w") as log:
            out = open(stdout_path, "w") if stdout_path else log  # noqa: SIM115 — closed below
            try:
                self.proc = subprocess.Popen(
                    [str(a) for a in argv],
                    cwd=cwd,
                    env=None if env is None else dict(env),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=log if stdout_path else subprocess.STDOUT,
                )
            finally:
                if out is not log:
                    out.close()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def output(self, chars: int | None = 3000) -> str:
        """The log's last ``chars`` characters (all of it for None)."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return text if chars is None else text[-chars:]

    def stdout_text(self) -> str:
        """What went to stdout, when it was kept apart (``stdout_path``)."""
        assert self.stdout_path is not None, f"{self.name}: stdout goes to the log"
        return self.stdout_path.read_text(errors="replace")

    # --- waiting for a signal -------------------------------------------------------------
    def wait_until(
        self,
        predicate: Callable[[], T],
        timeout: float,
        what: str,
        *,
        every: float = 0.1,
        ignore: tuple[type[BaseException], ...] = (),
        detail: Callable[[], str] | None = None,
    ) -> T:
        """Poll ``predicate`` until truthy (its value is returned); fail at once if the
        process exits first, or at the deadline, with ``detail()`` and the log tail."""

        def check() -> T:
            exited = not self.running  # looked at first: the predicate then sees its last word
            try:
                value = predicate()
            except ignore:
                if not exited:
                    raise
            else:
                if value or not exited:
                    return value
            raise AssertionError(
                f"{self.name} exited with {self.proc.returncode} before {what}:\n{self.output()}"
            )

        def tail() -> str:
            seen = f"{detail()}\n" if detail else ""
            return f"{seen}{self.name} log ({self.log_path}):\n{self.output()}"

        return poll_until(check, timeout, what, every=every, ignore=ignore, detail=tail)

    def wait_for_line(self, pattern: str | re.Pattern[str], timeout: float = 60.0) -> str:
        """The first log line containing ``pattern`` (a substring, or a regex searched per line)."""

        def found() -> str | None:
            for line in self.output(None).splitlines():
                if pattern.search(line) if isinstance(pattern, re.Pattern) else pattern in line:
                    return line
            return None

        what = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        return self.wait_until(found, timeout, f"a log line matching {what!r}")

    def wait_for_http(self, url: str, timeout: float = 60.0) -> bytes:
        """The body of the first 200 answer from ``url`` (refused, 503... mean "not yet")."""
        (body,) = self.wait_until(
            lambda: (http_get(url, timeout=2),),
            timeout,
            f"200 from {url}",
            ignore=(OSError, http.client.HTTPException),
        )
        return body

    # --- ending ---------------------------------------------------------------------------
    def wait_exit(self, timeout: float) -> int:
        """Its exit code once it ends by itself; fails with the log tail if it does not."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.name} still running after {timeout:g}s:\n{self.output()}") from None

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Send ``sig``, wait ``timeout`` s, then SIGKILL; returns (exit code, seconds to exit)."""
        t0 = time.monotonic()
        if self.running:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, time.monotonic() - t0


@pytest.fixture
def start_process(tmp_path: Path) -> Iterator[Callable[..., LoggedProcess]]:
    """Factory: ``start_process(argv, name="watch", separate_stdout=False, env=None)``; its log
    is ``tmp_path/<name>-<i>.log`` (stdout in ``.out`` when separate), its environment this
    one with the checkout on PYTHONPATH unless ``env`` is given. Stopped at teardown."""
    started: list[LoggedProcess] = []

    def start(
        argv: Sequence[str | Path],
        *,
        name: str,
        separate_stdout: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> LoggedProcess:
        base = tmp_path / f"{name}-{len(started)}"
        process = LoggedProcess(
            argv,
            base.with_suffix(".log"),
            env={**os.environ, "PYTHONPATH": str(REPO)} if env is None else env,
            stdout_path=base.with_suffix(".out") if separate_stdout else None,
            name=name,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()
