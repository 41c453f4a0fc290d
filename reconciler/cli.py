"""The `ollama-gitops` command and its subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence

from .. import __version__
from .privatedir import PRIVATE_UMASK
from .settings import ENV_PREFIX, Settings, add_option, add_reconciler_options, parse_listen


Commands = argparse._SubParsersAction  # the table of commands a parser has
AddCommand = Callable[[Commands], None]
"""Adds one command's parser (with its options and its `run`) to the table of commands."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the reconciler's commands (`validate`, `reconcile`); returns the exit code.

    The `ollama-gitops` console command is `api.cli.main`, which adds the API's commands to these.
    """
    return run(build_parser, argv)


def run(build: Callable[[str | None], tuple[argparse.ArgumentParser, Commands]], argv: Sequence[str] | None) -> int:
    """Parse `argv` with the parser `build(its first argument)` makes, and run the chosen command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser, _ = build(argv[0] if argv else None)
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.run(args) or 0)


def build_parser(only: str | None = None,
                 more: Mapping[str, AddCommand] | None = None) -> tuple[argparse.ArgumentParser, Commands]:
    """The command-line parser with the reconciler's commands and `more` (name: how to add it), and
    its table of commands.

    `only`, when it names one of them, builds that command's parser alone: parsing its arguments
    needs no other, and each costs about a millisecond to build (a scheduled `reconcile --once`
    pays for its own). Anything else (None, `--help`, a typo) builds them all, for the help and the
    "invalid choice" error that list them."""
    parser = argparse.ArgumentParser(
        prog="ollama-gitops",
        description="Keep the Ollama models of a fleet in line with YAML files in a Git repository.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    table = {**COMMANDS, **(more or {})}
    for name, add in table.items():
        if only not in table or name == only:
            add(commands)
    return parser, commands


def _add_validate(commands: Commands) -> None:
    validate = commands.add_parser(
        "validate",
        help="check the model files of a models repository checkout",
        description="Check every model file under PATH/models/. Prints one line per problem "
        "('path:line: message') and exits 1 if there is any, 0 if none.",
    )
    validate.add_argument("path", nargs="?", default=".", metavar="PATH", help="a models repository checkout (default: .)")
    add_option(validate, "--format", choices=("text", "github"), default="text", default_text="text",
               help="'github' prints GitHub Actions error annotations")
    validate.set_defaults(run=_run_validate)


def _add_reconcile(commands: Commands) -> None:
    reconcile = commands.add_parser(
        "reconcile",
        help="make Ollama match the models repository, on a schedule",
        description="Fetch the models repository, and pull, re-pull and prune models in Ollama to match it.",
    )
    add_option(reconcile, "--once", action="store_true", default_text="off: run until SIGTERM or SIGINT",
               help="run one cycle, wait for its pulls, and exit")
    add_option(reconcile, "--dry-run", action="store_true", default_text="off",
               help="with --once: print the plan and change nothing")
    add_option(reconcile, "--full", action="store_true", default_text="off",
               help="make the first cycle a full one (every server listed, every model planned) even when "
                    "the recorded state says nothing changed; with --once, that one cycle")
    add_option(reconcile, "--health-listen", default=os.environ.get(ENV_PREFIX + "HEALTH_LISTEN") or None,
               metavar="HOST:PORT", default_text="off", env=("HEALTH_LISTEN",),
               help="serve /healthz, /readyz and /metrics here, for probes and Prometheus")
    add_reconciler_options(reconcile)
    reconcile.set_defaults(run=_run_reconcile)


COMMANDS: dict[str, AddCommand] = {"validate": _add_validate, "reconcile": _add_reconcile}


def _run_reconcile(args: argparse.Namespace) -> int:
    from .settings import ConfigurationError
    from .summary import StateLocked

    configure_logging(args.log_level)
    os.umask(PRIVATE_UMASK)  # what it and git create in the state directory is this user's alone
    if args.dry_run and not args.once:
        print("ollama-gitops: --dry-run needs --once", file=sys.stderr)
        return 2
    try:
        health = parse_listen(args.health_listen, "--health-listen") if args.health_listen and not args.once else None
        settings = Settings.from_args(args)
        if args.once and not args.dry_run and not args.full:
            from .uptodate import run_once_if_up_to_date

            code = run_once_if_up_to_date(settings, sys.stdout)  # before importing the reconciler
            if code is not None:
                return code
        from . import metrics, service

        running = service.build(settings, dry_run=args.dry_run and args.once)
    except (ConfigurationError, StateLocked, OSError, ValueError) as exc:
        print(f"ollama-gitops: {exc}", file=sys.stderr)
        return 2
    running.full_first = args.full
    if not args.once:
        return service.run_forever(running, health)
    try:
        with metrics.unrecorded():  # one cycle, no /metrics to serve it on: no metrics library to import
            return service.run_once(running, sys.stdout, dry_run=args.dry_run)
    finally:
        running.stop()


def configure_logging(level: str) -> None:
    """Log lines to stderr, one per event."""
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for chatty in ("httpx", "apscheduler", "leaderelection"):  # a line per request or per job run drowns the actions
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _run_validate(args: argparse.Namespace) -> int:
    from .models.validate import report, validate_checkout

    state = validate_checkout(args.path)
    count = report(state.problems, args.path, sys.stdout, args.format)
    files = len(state.models) + len(state.unreadable)
    print(f"{files} model file(s), {len(state.models)} valid, {count} problem(s)", file=sys.stderr)
    return 1 if count else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
