"""``pilegate`` command line: serve, db, pileid (later issues add theirs)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import ConfigError, Settings, describe_settings, load_settings


def _settings_epilog() -> str:
    rows = describe_settings()
    width = max(len(env) for _, env, _, _ in rows)
    lines = ["settings (flag / environment variable, default):"]
    for name, env, default, desc in rows:
        flag = "--" + name.replace("_", "-")
        lines.append(f"  {env:<{width}}  {flag}  [default: {default}]")
        lines.append(f"      {desc}")
    lines.append("A TOML file (--config or PILEGATE_CONFIG_FILE) may set the same keys, e.g.")
    lines.append('  database_url = "postgresql+asyncpg://postgres@127.0.0.1/pilegate"')
    return "\n".join(lines)


def _add_setting_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if field.annotation is bool:
            parser.add_argument(
                flag,
                dest=f"setting_{name}",
                action=argparse.BooleanOptionalAction,
                default=None,
                help=argparse.SUPPRESS,
            )
        else:
            parser.add_argument(
                flag,
                dest=f"setting_{name}",
                default=None,
                metavar="VALUE",
                help=argparse.SUPPRESS,
            )


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(args).items():
        if not key.startswith("setting_") or value is None:
            continue
        name = key.removeprefix("setting_")
        annotation = str(Settings.model_fields[name].annotation)
        if isinstance(value, str) and annotation.startswith(("list", "dict")):
            # Lists and tables are given as JSON on the command line, as in
            # the environment: --lenient-models '["XD32E"]'.
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"invalid configuration: --{name.replace('_', '-')} must be JSON ({exc})"
                ) from exc
        out[name] = value
    return out


def _load(args: argparse.Namespace, **forced: Any) -> Settings:
    return load_settings({**_overrides(args), **forced}, config_file=args.config)


# --- serve -----------------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from .app import Gateway
    from .logging import configure_logging, get_logger

    settings = _load(args)
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("pilegate")

    try:
        factory = loop_factory(settings.event_loop)
    except ConfigError as exc:
        log.error("cannot start", error=str(exc))
        return 2

    tune_gc(settings.gc_threshold)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        log.info(
            "event loop",
            event_loop=type(loop).__module__.split(".")[0],
            gc_threshold=list(gc.get_threshold()),
            gc_frozen_objects=gc.get_freeze_count(),
        )
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await Gateway(settings).run(stop)

    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(main())
    except OSError as exc:
        log.error("cannot start", error=str(exc))
        return 1
    return 0


def tune_gc(threshold: int) -> None:
    """Fewer garbage collections for a long-running server (``gc_threshold``).

    With Python's default of a young collection every 700 net allocations,
    and an older one every 10 of those, a gateway holding 10,000
    connections (and a write queue of up to 100,000 ops) spent much of a
    reconnect storm in the collector, and its full collections were the
    slowest answers under load (docs/benchmarks.md, "Fewer garbage collections").
    What is loaded at startup (modules, schemas, compiled validators) is
    frozen first: it lives as long as the process and is never garbage.
    Reference cycles are still collected, only in larger steps."""
    if threshold <= 0:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold, 20, 100)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``event_loop`` setting: uvloop's loop factory, or None for asyncio's."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError(
                "invalid configuration: event_loop is uvloop but uvloop is not installed "
                "(pip install uvloop, or set event_loop to auto or asyncio)"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


# --- db --------------------------------------------------------------------------
def cmd_db(args: argparse.Namespace) -> int:
    from .storage import db

    # Database commands need no API token: dev only relaxes that check.
    settings = _load(args, dev=True)

    async def run() -> str | None:
        engine = db.create_engine(settings.database_url)
        try:
            if args.db_command == "upgrade":
                return await db.upgrade(engine, args.revision)
            return await db.current_revision(engine)
        finally:
            await engine.dispose()

    rev = asyncio.run(run())
    head = db.head_revision()
    state = "up to date" if rev == head else f"head is {head}"
    print(f"database revision: {rev or '(empty)'} ({state})")
    return 0 if args.db_command == "upgrade" or rev == head else 1


# --- pileid ----------------------------------------------------------------------
def cmd_pileid_explain(args: argparse.Namespace) -> int:
    import pileid

    results = [pileid.explain(text) for text in args.ids]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], ensure_ascii=False, indent=2))
    else:
        print("\n\n".join(r.to_text() for r in results))
    return 0 if all(r.valid for r in results) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pilegate", description="pilegate charge point gateway")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the gateway",
        description="Run the gateway: charger listeners and the ops HTTP API.",
        epilog=_settings_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    _add_setting_flags(serve)
    serve.set_defaults(func=cmd_serve)

    dbp = sub.add_parser("db", help="database schema migrations")
    dbsub = dbp.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = dbsub.add_parser("upgrade", help="apply migrations (default: to head)")
    up.add_argument("revision", nargs="?", default="head")
    cur = dbsub.add_parser("current", help="show the applied revision (exit 1 if behind)")
    for p in (up, cur):
        p.add_argument("--config", metavar="FILE", help="TOML configuration file")
        p.add_argument("--database-url", dest="setting_database_url", metavar="URL")
        p.set_defaults(func=cmd_db)

    pid = sub.add_parser("pileid", help="pile and gun IDs")
    pidsub = pid.add_subparsers(dest="pileid_command", required=True, metavar="ACTION")
    ex = pidsub.add_parser(
        "explain",
        help="decode IDs and say why any is invalid (exit 1 if one is)",
    )
    ex.add_argument("ids", nargs="+", metavar="ID")
    ex.add_argument("--json", action="store_true", help="machine-readable output")
    ex.set_defaults(func=cmd_pileid_explain)

    from simulators.cli import register as register_simulator

    register_simulator(sub)

    from .cli_whitelist import register as register_whitelist

    register_whitelist(sub)
    from .cli_firmware import register as register_firmware

    register_firmware(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc: int = args.func(args)
    except ConfigError as exc:
        print(f"pilegate: {exc}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
