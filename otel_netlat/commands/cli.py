"""``otel-netlat``: run · check · watch · slow.

Every expected failure (bad configuration, missing privilege or kernel feature, busy port)
ends as one line on stderr and exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from typing import NoReturn

from otel_netlat.collect.maps import MapReadError
from otel_netlat.config import ConfigError, add_arguments, load_config
from otel_netlat.kernel.btf import BtfError
from otel_netlat.kernel.shim import ShimError
from otel_netlat.program.build import ProgramError

EXIT_USAGE = 2
log = logging.getLogger("otel_netlat")


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line too: the usage block would bury the line that matters."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{_one_line(f'{self.prog}: error: {message}')} (see {self.prog} --help)\n")

    def parse_args(  # type: ignore[override] - argparse's overloads, one used here
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> argparse.Namespace:
        """As argparse's, but unrecognized arguments are quoted: an empty or blank one stays visible."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(map(_quoted, extras))}")
        return parsed


def _quoted(arg: str) -> str:
    """``arg`` as a shell would need it typed; escaped (``'\\n'``) if it holds an unprintable character."""
    return shlex.quote(arg) if arg.isprintable() else repr(arg)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="otel-netlat",
        description="Measure how long packets spend inside the Linux kernel; export OpenTelemetry metrics.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,check,watch,slow}")
    for name, help_text in (
        ("run", "run the agent: Prometheus on :2112, OTLP when an endpoint is set"),
        ("check", "preflight: privileges, BTF, tracefs, and which stages can attach here"),
        ("watch", "live per-stage latency histograms in the terminal"),
        ("slow", "slow packets live, one line each (or --json): stage, latency, 5-tuple, CPU"),
    ):
        add_arguments(sub.add_parser(name, help=help_text, description=help_text), name)
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s otel-netlat %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _one_line(text: str) -> str:
    """``text`` on one line: a kernel, SDK or OS message may carry its own line breaks."""
    return " ".join(text.splitlines())


def _fail(message: str) -> int:
    print(_one_line(f"otel-netlat: error: {message}"), file=sys.stderr)
    return EXIT_USAGE


def cmd_check(config) -> int:
    from otel_netlat.commands.check import run_check  # noqa: PLC0415

    return run_check(config)


def cmd_run(config) -> int:
    from otel_netlat.commands.run import Agent  # noqa: PLC0415
    from otel_netlat.program.plan import plan_for_this_kernel  # noqa: PLC0415

    return Agent(config, plan_for_this_kernel(config)).run()


def cmd_watch(config) -> int:
    from otel_netlat.commands.watch import run_watch  # noqa: PLC0415
    from otel_netlat.program.plan import plan_for_this_kernel  # noqa: PLC0415

    return run_watch(config, plan_for_this_kernel(config))


def cmd_slow(config) -> int:
    from otel_netlat.commands.slow import run_slow, with_default_threshold  # noqa: PLC0415
    from otel_netlat.program.plan import plan_for_this_kernel  # noqa: PLC0415

    config = with_default_threshold(config)
    return run_slow(config, plan_for_this_kernel(config))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = load_config(args, os.environ)
    except ConfigError as e:
        return _fail(str(e))
    _setup_logging(config.log_level)
    for warning in config.warnings:
        log.warning("%s", warning)
    from otel_netlat.export import TelemetryError  # noqa: PLC0415
    from otel_netlat.program.plan import StartupError  # noqa: PLC0415

    commands = {"run": cmd_run, "check": cmd_check, "watch": cmd_watch, "slow": cmd_slow}
    try:
        return commands[args.command](config)
    except (StartupError, ProgramError, BtfError, ShimError, TelemetryError, MapReadError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
