"""The `ollama-gitops` command and its subcommands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ollama-gitops` console command; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help(sys.stderr)
        return 2
    return int(args.run(args) or 0)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollama-gitops",
        description="Keep the Ollama models of a fleet in line with YAML files in a Git repository.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check the model files of a models repository checkout",
        description="Check every model file under PATH/models/. Prints one line per problem "
        "('path:line: message') and exits 1 if there is any, 0 if none.",
    )
    validate.add_argument("path", nargs="?", default=".", metavar="PATH", help="a models repository checkout (default: .)")
    validate.add_argument("--format", choices=("text", "github"), default="text",
                          help="'github' prints GitHub Actions error annotations")
    validate.set_defaults(run=_run_validate)
    return parser


def _run_validate(args: argparse.Namespace) -> int:
    from .validate import report, validate_checkout

    state = validate_checkout(args.path)
    count = report(state.problems, args.path, sys.stdout, args.format)
    files = len(state.models) + len(state.unreadable)
    print(f"{files} model file(s), {len(state.models)} valid, {count} problem(s)", file=sys.stderr)
    return 1 if count else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
