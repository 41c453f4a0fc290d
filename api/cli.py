"""The `ollama-gitops` command: the reconciler's commands plus `serve`, `api` and `status`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Only what parsing needs: `--help`, `status` and `validate` must not pay for the service, the
# Kubernetes and Ollama clients, Flask or waitress (tests/test_cli_imports.py); each command imports
# what it runs.
from ..reconciler import cli as reconciler_cli
from ..reconciler.privatedir import PRIVATE_UMASK
from ..reconciler.settings import DEFAULT_AUTHOR, ENV_PREFIX, Settings, add_option, add_reconciler_options, env_flag


WATCH_LIMIT = 600  # seconds `status --watch` waits at most for the models to settle
WATCH_POLL = 1.0  # seconds between redraws while the events stream is down
WATCH_REDRAW = 2.0  # seconds between redraws at most while it is up (an event redraws at once)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `ollama-gitops` console command; returns the exit code."""
    return reconciler_cli.run(build_parser, argv)


def build_parser(only: str | None = None) -> tuple[argparse.ArgumentParser, reconciler_cli.Commands]:
    """The whole command line: the reconciler's commands plus `serve`, `api`, `status` and `plan`
    (`only`: see `reconciler.cli.build_parser`)."""
    return reconciler_cli.build_parser(only, COMMANDS)


def _add_serve(commands: reconciler_cli.Commands) -> None:
    serve = commands.add_parser("serve", help="the reconciler and the API in one process",
                                description="Reconcile on a schedule and serve the API on port 8082.")
    add_reconciler_options(serve, reconciles=True)
    _add_api_options(serve)
    serve.set_defaults(run=_run_serve)


def _add_api(commands: reconciler_cli.Commands) -> None:
    api = commands.add_parser("api", help="the API alone (with a reconciler run separately)",
                              description="Serve the API; status is read from a reconciler's state directory.")
    add_reconciler_options(api, reconciles=False)  # `api` pulls nothing and leads nothing
    _add_api_options(api)
    api.set_defaults(run=_run_api)


def _add_status(commands: reconciler_cli.Commands) -> None:
    status = commands.add_parser(
        "status", help="show the models, their state and the sync summary",
        description="Exit codes: 0 all well; 1 a model is Failed, a model file has a problem or the sync "
                    "failed (the last cycle, e.g. a refused prune to zero, or the API's fetch); 2 the API "
                    "cannot be reached.")
    _add_api_url(status)
    _add_api_key_file(status, "none: no key sent")
    add_option(status, "--namespace", default=None, default_text="the API's", help="namespace to show", metavar="NS")
    add_option(status, "--watch", action="store_true", default_text="off",
               help="keep redrawing until the newest commit is applied and no model is Pending or "
                    f"Pulling (or a cycle fails), at most {WATCH_LIMIT // 60} minutes")
    status.set_defaults(run=_run_status)


def _add_plan(commands: reconciler_cli.Commands) -> None:
    plan = commands.add_parser(
        "plan", help="what merging a ref would do: pulls (with sizes), deletes and file problems, per server",
        description="Ask the running service (serve or api) to plan a branch, tag, ref or commit of the models "
                    "repository against the live state; nothing is changed. With --offline, compare a checkout's "
                    "commit with its base instead (no service; sizes and servers unknown). Exit codes: 0 planned, "
                    "the files are valid; 1 planned, the ref's files have problems; 2 could not plan.")
    add_option(plan, "--ref", default=None, metavar="REF", default_text="HEAD with --offline, else required",
               help="the branch, tag, ref (refs/pull/7/head) or commit to plan")
    _add_api_url(plan)
    _add_api_key_file(plan, "none: no key sent")
    add_option(plan, "--format", choices=("text", "markdown", "json"), default="text", default_text="text",
               help="'markdown' for a pull request comment")
    add_option(plan, "--offline", action="store_true", default_text="off",
               help="plan without the service: the checkout's --ref (HEAD) against --base")
    add_option(plan, "--base", default="HEAD^1", metavar="REV", default_text="HEAD^1",
               help="with --offline: the commit to compare with (HEAD^1 is the base branch in a pull request's "
                    "merge commit)")
    plan.add_argument("path", nargs="?", default=".", metavar="PATH", help="with --offline: the checkout (default: .)")
    plan.set_defaults(run=_run_plan)


COMMANDS: dict[str, reconciler_cli.AddCommand] = {"serve": _add_serve, "api": _add_api, "status": _add_status,
                                                   "plan": _add_plan}


def _add_api_url(parser: argparse.ArgumentParser) -> None:
    add_option(parser, "--api-url", default=os.environ.get(f"{ENV_PREFIX}API_URL", "http://127.0.0.1:8082"),
               default_text="http://127.0.0.1:8082", help="the API", env=("API_URL",), metavar="URL")


def _add_api_key_file(parser: argparse.ArgumentParser, default_text: str) -> None:
    add_option(parser, "--api-key-file", default=os.environ.get(f"{ENV_PREFIX}API_KEY_FILE"),
               default_text=default_text, env=("API_KEY_FILE", "API_KEY"),
               help=f"file holding the API key (or set {ENV_PREFIX}API_KEY to the key itself)")


def _add_api_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    add_option(parser, "--listen", default=env(f"{ENV_PREFIX}LISTEN"), metavar="HOST:PORT", env=("LISTEN",),
               default_text="0.0.0.0:8082 with an API key, 127.0.0.1:8082 without", help="where to serve the API")
    _add_api_key_file(parser, "none: no authentication")
    add_option(parser, "--namespace", default=env(f"{ENV_PREFIX}NAMESPACE", "default"), default_text="default",
               env=("NAMESPACE",), help="namespace when a request names none")
    add_option(parser, "--git-author", default=env(f"{ENV_PREFIX}GIT_AUTHOR", DEFAULT_AUTHOR), default_text=DEFAULT_AUTHOR,
               env=("GIT_AUTHOR",), help="author of the API's commits, 'Name <email>'")
    add_option(parser, "--insecure-no-auth", action="store_true", default=env_flag("insecure-no-auth"),
               default_text="off", env=("INSECURE_NO_AUTH",),
               help="allow listening beyond loopback without an API key")
    add_option(parser, "--threads", type=int, default=int(env(f"{ENV_PREFIX}THREADS", "16")), default_text="16",
               env=("THREADS",), help="request threads; half of them at most wait on writes")
    add_option(parser, "--allowed-host", action="append", default=None, metavar="HOST", env=("ALLOWED_HOSTS",),
               default_text="none",
               help="a host name clients use to reach the API, answered without an API key besides "
                    "localhost, 127.0.0.1, [::1] and the listen address ('*': any); repeatable "
                    "(the environment variable: comma-separated)")
    add_option(parser, "--registry-url", default=env(f"{ENV_PREFIX}REGISTRY_URL"), metavar="URL",
               default_text="https://registry.ollama.ai", env=("REGISTRY_URL",),
               help="the registry (or a mirror of it) that plans ask for the manifests of models with no host "
                    "of their own, for their download sizes")
    add_option(parser, "--webhook-secret-file", default=env(f"{ENV_PREFIX}WEBHOOK_SECRET_FILE"),
               default_text="none: webhooks off", env=("WEBHOOK_SECRET_FILE", "WEBHOOK_SECRET"),
               help="file holding the secret shared with the Git host's webhook (or set "
                    f"{ENV_PREFIX}WEBHOOK_SECRET to the secret itself; the file wins)")


def _api_key(key_file: str | None) -> str | None:
    if key_file:
        return Path(key_file).read_text(encoding="utf-8").strip() or None
    return os.environ.get(f"{ENV_PREFIX}API_KEY") or None


def allowed_hosts(option: list[str] | None) -> tuple[str, ...]:
    """`--allowed-host` entries, else `OLLAMA_GITOPS_ALLOWED_HOSTS` split at commas (the option wins)."""
    entries = option if option is not None else os.environ.get(f"{ENV_PREFIX}ALLOWED_HOSTS", "").split(",")
    return tuple(entry.strip() for entry in entries if entry.strip())


def webhook_secret(secret_file: str | None) -> str | None:
    """The webhook secret: the file's content without one trailing newline (the file wins, as for
    every other secret), else `OLLAMA_GITOPS_WEBHOOK_SECRET`; None when neither is set (webhooks off).

    Only one newline goes: an editor or `echo` adds it, while other whitespace may be part of a
    secret a Git host was given. An empty file is an error, not webhooks quietly off."""
    if secret_file:
        secret = Path(secret_file).read_text(encoding="utf-8")
        secret = secret[:-2] if secret.endswith("\r\n") else secret[:-1] if secret.endswith("\n") else secret
        if not secret:
            raise ValueError(f"--webhook-secret-file {secret_file} is empty")
        return secret
    return os.environ.get(f"{ENV_PREFIX}WEBHOOK_SECRET") or None


def _run_serve(args: argparse.Namespace) -> int:
    return _serve(args, with_reconciler=True)


def _run_api(args: argparse.Namespace) -> int:
    return _serve(args, with_reconciler=False)


def _serve(args: argparse.Namespace, with_reconciler: bool) -> int:
    from ..reconciler.service import ConfigurationError as ReconcilerConfigurationError
    from ..reconciler.service import stop_signals
    from ..reconciler.state import StateLocked
    from . import runtime

    reconciler_cli.configure_logging(args.log_level)
    stop = stop_signals()
    os.umask(PRIVATE_UMASK)  # what it and git create in the state directory is this user's alone
    try:
        options = runtime.ApiOptions(args.listen, _api_key(args.api_key_file), args.namespace, args.git_author,
                                     args.insecure_no_auth, args.threads, webhook_secret(args.webhook_secret_file),
                                     allowed_hosts(args.allowed_host), registry_url=args.registry_url)
        running = runtime.start(Settings.from_args(args), options, with_reconciler=with_reconciler)
    except (runtime.ConfigurationError, ReconcilerConfigurationError, StateLocked, OSError, ValueError) as exc:
        print(f"ollama-gitops: {exc}", file=sys.stderr)
        return 2
    stop.wait()
    running.stop()
    return 0


def _run_status(args: argparse.Namespace) -> int:
    from .statusview import ApiUnavailable, EventWatcher, fetch, render

    key = _api_key(args.api_key_file)
    live = args.watch and sys.stdout.isatty()
    deadline = time.monotonic() + WATCH_LIMIT
    first = None
    # Redraw when the events stream says something changed; poll while it is down.
    watcher = EventWatcher(args.api_url, key).start() if args.watch else None
    try:
        while True:
            try:
                snapshot = fetch(args.api_url, key, args.namespace)
            except ApiUnavailable as exc:
                print(f"ollama-gitops: {exc}", file=sys.stderr)
                return 2
            first = first or snapshot
            text = render(snapshot)
            sys.stdout.write(("\x1b[H\x1b[2J" if live else "") + text)
            sys.stdout.flush()
            # Started just after a write, the write is not applied yet: wait for it, not only for pulls.
            if not args.watch or snapshot.settled(since=first):
                return 0 if snapshot.healthy else 1
            if time.monotonic() >= deadline:
                print(f"ollama-gitops: still not settled after {WATCH_LIMIT // 60} minutes", file=sys.stderr)
                return 1
            assert watcher is not None
            if watcher.live:
                watcher.wait(WATCH_REDRAW)  # an event, or a redraw of the times shown
            else:
                time.sleep(WATCH_POLL)
    finally:
        if watcher is not None:
            watcher.close()


def _run_plan(args: argparse.Namespace) -> int:
    from .planview import PlanUnavailable, fetch, render

    if args.offline:
        from ..reconciler.preview import offline_preview

        try:
            plan = offline_preview(args.path, args.base, args.ref or "HEAD", now=time.time()).to_json()
        except ValueError as exc:
            print(f"ollama-gitops: {exc}", file=sys.stderr)
            return 2
    else:
        if not args.ref:
            print("ollama-gitops: plan needs --ref REF (or --offline)", file=sys.stderr)
            return 2
        try:
            plan = fetch(args.api_url, _api_key(args.api_key_file), args.ref)
        except PlanUnavailable as exc:
            print(f"ollama-gitops: {exc}", file=sys.stderr)
            return 2
    sys.stdout.write(render(plan, args.format))
    return 1 if plan["problems"] else 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
