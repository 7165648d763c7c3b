"""``otel-netlat``: run · check · watch.

Every expected failure (bad configuration, missing privilege or kernel feature, busy port)
ends as one line on stderr and exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading

from otel_netlat.collect.maps import MapReadError
from otel_netlat.config import ConfigError, add_arguments, load_config
from otel_netlat.kernel.btf import BtfError
from otel_netlat.kernel.shim import ShimError
from otel_netlat.program.build import ProgramError

EXIT_USAGE = 2
log = logging.getLogger("otel_netlat")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-netlat",
        description="Measure how long packets spend inside the Linux kernel; export OpenTelemetry metrics.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,check,watch}")
    for name, help_text in (
        ("run", "run the agent: Prometheus on :2112, OTLP when an endpoint is set"),
        ("check", "preflight: privileges, BTF, tracefs, and which stages can attach here"),
        ("watch", "live per-stage latency histograms in the terminal"),
    ):
        add_arguments(sub.add_parser(name, help=help_text, description=help_text), name)
    return parser


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s otel-netlat %(levelname)s %(message)s",
        stream=sys.stderr,
    )


def _fail(message: str) -> int:
    print(f"otel-netlat: error: {message}", file=sys.stderr)
    return EXIT_USAGE


def cmd_check(config) -> int:
    from otel_netlat.program.plan import check_report  # noqa: PLC0415

    findings, ok = check_report(config)
    width = max(len(f.name) for f in findings)
    for f in findings:
        print(f"{'ok ' if f.ok else 'NO '} {f.name:<{width}}  {f.detail}")
    print("run would start" if ok else "run would NOT start: fix the lines marked NO above")
    return 0 if ok else 1


def cmd_run(config) -> int:
    from otel_netlat.commands.run import Agent  # noqa: PLC0415
    from otel_netlat.program.plan import make_plan  # noqa: PLC0415

    plan = make_plan(config)
    return Agent(config, plan).run()


def cmd_watch(config) -> int:
    from otel_netlat.collect.reader import SnapshotReader  # noqa: PLC0415
    from otel_netlat.commands.watch import watch  # noqa: PLC0415
    from otel_netlat.program.build import load_program  # noqa: PLC0415
    from otel_netlat.program.plan import make_plan  # noqa: PLC0415

    plan = make_plan(config)
    from otel_netlat.program.memory import release_compiler_memory  # noqa: PLC0415

    program = load_program(plan.spec, plan.info)
    release_compiler_memory()
    reader = SnapshotReader(program, plan.unavailable)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        watch(reader.read, config.interval, config.count, stop=stop.wait)
    finally:
        reader.close()
        program.detach()
    return 0


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

    commands = {"run": cmd_run, "check": cmd_check, "watch": cmd_watch}
    try:
        return commands[args.command](config)
    except (StartupError, ProgramError, BtfError, ShimError, TelemetryError, MapReadError) as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
