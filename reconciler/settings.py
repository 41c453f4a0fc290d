"""Settings of the long-running commands: command-line options, each also read from
`OLLAMA_GITOPS_<NAME>` in the environment (the option wins)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .git.repo import GitCredentials

if TYPE_CHECKING:
    from .ollama.inventory import Inventory

ENV_PREFIX = "OLLAMA_GITOPS_"
DEFAULT_AUTHOR = "ollama-gitops <ollama-gitops@localhost>"  # of the API's commits (--git-author)
# Defaults of the options only the reconciling commands take; `api`, which has none of them, gets these.
RECONCILING_DEFAULTS = {"resync-interval": "300", "concurrency": "2", "lease-duration": "15"}


@dataclass(frozen=True)
class Settings:
    repo: str | None
    branch: str
    interval: float
    resync_interval: float
    state_dir: Path
    ollama_urls: tuple[str, ...]  # each `URL` or `NAME=URL`; empty when only a servers file names servers
    kubernetes: str
    concurrency: int
    allow_empty: bool
    credentials: GitCredentials = field(repr=False)
    leader_election_namespace: str = "default"
    lease_duration: int = 15
    servers_file: Path | None = None
    ollama_service: str | None = None  # NAMESPACE/NAME: the servers are that Service's ready pods
    ollama_urls_source: str = "--ollama-url"  # where `ollama_urls` came from, for its errors

    @property
    def ollama_url(self) -> str:
        """The Ollama servers given by URL, as one line for logs (no credentials: URLs with them are refused)."""
        return ", ".join(self.ollama_urls) or "(none)"

    def inventory(self) -> Inventory:
        """The servers given by `--ollama-url` (`InventoryError` naming the value when one cannot be used)."""
        from .ollama.inventory import Inventory, parse_ollama_urls

        if not self.ollama_urls:
            return Inventory()
        return parse_ollama_urls(self.ollama_urls, source=self.ollama_urls_source)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Settings:
        token = os.environ.get(f"{ENV_PREFIX}GIT_TOKEN") or None
        if args.git_token_file:
            token = Path(args.git_token_file).read_text(encoding="utf-8").strip()
        credentials = GitCredentials(
            ssh_key_file=Path(args.ssh_key_file) if args.ssh_key_file else None,
            known_hosts_file=Path(args.known_hosts_file) if args.known_hosts_file else None,
            token=token,
            username=args.git_username,
            ca_file=Path(args.git_ca_file) if args.git_ca_file else None,
        )
        servers_file = getattr(args, "servers_file", None)
        urls, urls_source = _ollama_urls(getattr(args, "ollama_url", None), servers_file)
        repo = args.repo or None
        if repo is not None:
            # At start-up: a token that would go in clear stops the command with the reason.
            repo, credentials = credentials.for_remote(repo)
        return cls(
            repo=repo,
            branch=args.branch,
            interval=float(args.interval),
            resync_interval=float(getattr(args, "resync_interval", RECONCILING_DEFAULTS["resync-interval"])),
            state_dir=Path(args.state_dir or default_state_dir()).expanduser(),
            # `api` has no options about Ollama, pulls or the Lease (it uses none): their defaults.
            ollama_urls=urls,
            ollama_urls_source=urls_source,
            servers_file=Path(servers_file).expanduser() if servers_file else None,
            kubernetes=args.kubernetes,
            concurrency=int(getattr(args, "concurrency", RECONCILING_DEFAULTS["concurrency"])),
            allow_empty=bool(getattr(args, "allow_empty", False)),
            credentials=credentials,
            leader_election_namespace=args.leader_election_namespace,
            lease_duration=int(getattr(args, "lease_duration", RECONCILING_DEFAULTS["lease-duration"])),
            ollama_service=getattr(args, "ollama_service", None) or None,
        )


class _FromEnvironment(list):  # type: ignore[type-arg]
    """The values of a repeatable option as its variable gave them (a comma-separated list)."""


class _Repeatable(argparse.Action):
    """`--option VALUE`, any number of times; the values given replace the variable's, never add to them."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        kept = [] if current is None or isinstance(current, _FromEnvironment) else current
        setattr(namespace, self.dest, [*kept, values])


def _env_list(name: str) -> _FromEnvironment | None:
    listed = (_env(name, "") or "").strip()
    return _FromEnvironment(item.strip() for item in listed.split(",")) if listed else None


def _ollama_urls(given: list[str] | None, servers_file: str | None) -> tuple[tuple[str, ...], str]:
    """The `--ollama-url` values (or `OLLAMA_GITOPS_OLLAMA_URL`'s comma-separated list), else, when
    no servers file names the servers, the default server; and where they came from."""
    if given:
        return tuple(given), f"{ENV_PREFIX}OLLAMA_URL" if isinstance(given, _FromEnvironment) else "--ollama-url"
    return ((), "--ollama-url") if servers_file else ((_default_ollama_url(),), "--ollama-url")


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(ENV_PREFIX + env_name(name), default)


def env_flag(name: str) -> bool:
    """Is `OLLAMA_GITOPS_<NAME>` set to 1, true, yes or on?"""
    return (_env(name, "") or "").strip().lower() in ("1", "true", "yes", "on")


def _default_ollama_url() -> str:
    """`$OLLAMA_HOST` read as Ollama reads it (`gpu-1` is `http://gpu-1:11434`), else localhost."""
    from .ollama.inventory import normalize_url

    host = os.environ.get("OLLAMA_HOST", "").strip()
    if not host:
        return "http://localhost:11434"
    try:
        return normalize_url(host)
    except ValueError:  # passed on as it is: start-up says what is wrong with it
        return host


def add_option(parser: argparse.ArgumentParser, flag: str, *, default_text: str, help: str,
               env: tuple[str, ...] = (), **kwargs: object) -> argparse.Action:
    """Add one option, documented once: its help line ends with its default and the environment
    variables it reads, and README's option tables are held to the same `default_text` and `env`
    (tests/test_options_documented.py), so help and README cannot drift apart."""
    envs = tuple(ENV_PREFIX + name for name in env)
    note = f" [env {', '.join(envs)}]" if envs else ""
    action = parser.add_argument(flag, help=f"{help} (default: {default_text}){note}", **kwargs)  # type: ignore[arg-type]
    action.env = envs  # type: ignore[attr-defined]
    action.default_text = default_text  # type: ignore[attr-defined]
    return action


def env_name(name: str) -> str:
    """`git-ca-file` -> `GIT_CA_FILE` (after OLLAMA_GITOPS_)."""
    return name.upper().replace("-", "_")


def add_reconciler_options(parser: argparse.ArgumentParser, *, reconciles: bool = True) -> None:
    """The options of the commands that follow the models repository. With `reconciles=False`
    (`ollama-gitops api`) only those the API uses itself: none about Ollama, pulls or the Lease."""
    def option(name: str, default: str | None, default_text: str, help: str, **kwargs: object) -> None:
        add_option(parser, f"--{name}", default=_env(name, default), default_text=default_text, help=help,
                   env=(env_name(name),), **kwargs)

    def reconciling(name: str, help: str, **kwargs: object) -> None:
        if reconciles:
            option(name, RECONCILING_DEFAULTS[name], RECONCILING_DEFAULTS[name], help, **kwargs)

    option("repo", None, "a bare repository in the state directory, seeded with the example models",
           "Git URL or path of the models repository", metavar="URL")
    option("branch", "main", "main", "branch to follow")
    option("interval", "60", "60", "seconds between cycles (for `api`: between fetches of the repository)",
           type=float, metavar="SECONDS")
    reconciling("resync-interval", "seconds between listings of Ollama to find drift", type=float, metavar="SECONDS")
    option("state-dir", None,
           "the per-user state directory (~/.local/state/ollama-gitops on Linux)",
           "where the private clone, the state and the embedded default repository live")
    if reconciles:
        add_option(parser, "--ollama-url", action=_Repeatable, default=_env_list("ollama-url"), metavar="[NAME=]URL",
                   default_text="$OLLAMA_HOST, else http://localhost:11434",
                   help="an Ollama server to keep in line, URL or NAME=URL; give it once per server (one "
                        "without a name is 'default'; the variable takes a comma-separated list)",
                   env=("OLLAMA_URL",))
        option("servers-file", None, "none", "a YAML file of the servers to keep in line, with their labels; "
               "re-read when it changes", metavar="PATH")
        option("ollama-service", None, "none", "Kubernetes mode: the Service NAMESPACE/NAME whose ready pods are the "
               "Ollama servers (instead of --ollama-url)", metavar="NAMESPACE/NAME")
    option("kubernetes", "auto", "auto", "Kubernetes mode; auto is on in a pod or with a kubeconfig "
           "(KUBECONFIG or ~/.kube/config)", choices=("auto", "on", "off"))
    reconciling("concurrency", "parallel pulls", type=int)
    option("ssh-key-file", None, "none", "SSH private key for an ssh:// repository")
    option("known-hosts-file", None, "none", "known_hosts for an ssh:// repository (strict host key checking)")
    add_option(parser, "--git-token-file", default=_env("git-token-file", None), default_text="none",
               help=f"file holding an HTTPS token (or set {ENV_PREFIX}GIT_TOKEN to the token itself)",
               env=("GIT_TOKEN_FILE", "GIT_TOKEN"))
    option("git-username", "x-access-token", "x-access-token", "user name sent with the HTTPS token")
    option("git-ca-file", None, "the system's CAs", "PEM file of the CA certificates to verify an https:// "
           "repository's server with (for a Git host with a private CA)")
    if reconciles:
        add_option(parser, "--allow-empty", action="store_true", default=env_flag("allow-empty"),
                   default_text="off", help="allow a commit to prune every model", env=("ALLOW_EMPTY",))
    option("leader-election-namespace", os.environ.get("POD_NAMESPACE", "default"),
           "$POD_NAMESPACE, else default", "namespace of the Lease that picks the one replica that applies, "
           "and of the ConfigMap ollama-gitops-sync")
    reconciling("lease-duration", "seconds a leader's Lease lasts without renewal; a standby replica takes "
                "over after that", type=int, metavar="SECONDS")
    option("log-level", "INFO", "INFO", "DEBUG, INFO, WARNING or ERROR")


def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{option} must be HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def default_state_dir() -> str:
    """The per-user state directory, when `--state-dir` is not given."""
    import platformdirs  # ~7 ms to import (tempfile, shutil, random): only when it is needed

    return platformdirs.user_state_dir("ollama-gitops")


class ConfigurationError(Exception):
    """The settings cannot work; the message says why."""


def kubernetes_mode(settings: Settings) -> bool:
    """`on`, or `auto` when in a pod or a kubeconfig is found."""
    return settings.kubernetes == "on" or (settings.kubernetes == "auto" and kubernetes_configured())


def kubernetes_configured() -> bool:
    """Is there a cluster to talk to: in-cluster service variables, or a kubeconfig file?"""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    return any(Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p)
