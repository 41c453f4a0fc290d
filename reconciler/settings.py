"""Settings of the long-running commands: command-line options, each also read from
`OLLAMA_GITOPS_<NAME>` in the environment (the option wins)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from .git.repo import GitCredentials

ENV_PREFIX = "OLLAMA_GITOPS_"
DEFAULT_AUTHOR = "ollama-gitops <ollama-gitops@localhost>"  # of the API's commits (--git-author)


@dataclass(frozen=True)
class Settings:
    repo: str | None
    branch: str
    interval: float
    resync_interval: float
    state_dir: Path
    ollama_url: str
    kubernetes: str
    concurrency: int
    allow_empty: bool
    credentials: GitCredentials = field(repr=False)
    leader_election_namespace: str = "default"
    lease_duration: int = 15

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
        repo = args.repo or None
        if repo is not None:
            # At start-up: a token that would go in clear stops the command with the reason.
            repo, credentials = credentials.for_remote(repo)
        return cls(
            repo=repo,
            branch=args.branch,
            interval=float(args.interval),
            resync_interval=float(args.resync_interval),
            state_dir=Path(args.state_dir).expanduser(),
            ollama_url=args.ollama_url,
            kubernetes=args.kubernetes,
            concurrency=int(args.concurrency),
            allow_empty=bool(args.allow_empty),
            credentials=credentials,
            leader_election_namespace=args.leader_election_namespace,
            lease_duration=int(args.lease_duration),
        )


def _env(name: str, default: str | None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _env_flag(name: str) -> bool:
    return (_env(name, "") or "").strip().lower() in ("1", "true", "yes", "on")


def _default_ollama_url() -> str:
    host = os.environ.get("OLLAMA_HOST", "").strip()
    if not host:
        return "http://localhost:11434"
    return host if "://" in host else f"http://{host}"


def add_reconciler_options(parser: argparse.ArgumentParser) -> None:
    """The options every command that runs the reconciler takes."""
    def option(name: str, default: str | None, help: str, **kwargs: object) -> None:
        env = ENV_PREFIX + name.upper().replace("-", "_")
        parser.add_argument(f"--{name}", default=_env(name, default), help=f"{help} [env {env}]", **kwargs)  # type: ignore[arg-type]

    option("repo", None, "Git URL or path of the models repository (default: a local repository "
           "in the state directory, seeded with the example models)")
    option("branch", "main", "branch to follow (default: main)")
    option("interval", "60", "seconds between cycles (default: 60)", type=float)
    option("resync-interval", "300", "seconds between checks of Ollama for drift (default: 300)", type=float)
    option("state-dir", platformdirs.user_state_dir("ollama-gitops"), "where the private clone and the state live")
    option("ollama-url", _default_ollama_url(), "the Ollama server (default: $OLLAMA_HOST, else http://localhost:11434)")
    option("kubernetes", "auto", "Kubernetes mode (default: auto, off when no cluster configuration is found)",
           choices=("auto", "on", "off"))
    option("concurrency", "2", "parallel pulls (default: 2)", type=int)
    option("ssh-key-file", None, "SSH private key for an ssh:// repository")
    option("known-hosts-file", None, "known_hosts for an ssh:// repository (strict host key checking)")
    option("git-token-file", None, "file holding an HTTPS token (or set OLLAMA_GITOPS_GIT_TOKEN)")
    option("git-username", "x-access-token", "user name sent with the HTTPS token (default: x-access-token)")
    option("git-ca-file", None, "PEM file of the CA certificates to verify an https:// repository's server with, "
           "instead of the system's (for a Git host with a private CA)")
    parser.add_argument("--allow-empty", action="store_true", default=_env_flag("allow-empty"),
                        help=f"allow a commit to prune every model [env {ENV_PREFIX}ALLOW_EMPTY]")
    option("leader-election-namespace", os.environ.get("POD_NAMESPACE", "default"),
           "namespace of the Lease that picks the one replica that applies (default: $POD_NAMESPACE, else default)")
    option("lease-duration", "15", "seconds a leader's Lease lasts without renewal; a standby replica "
           "takes over after that (default: 15)", type=int)
    option("log-level", "INFO", "DEBUG, INFO, WARNING or ERROR (default: INFO)")


def parse_listen(text: str, option: str = "--listen") -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT` or `:PORT` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{option} must be HOST:PORT, got {text!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def kubernetes_configured() -> bool:
    """Is there a cluster to talk to: in-cluster service variables, or a kubeconfig file?"""
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    return any(Path(p).is_file() for p in kubeconfig.split(os.pathsep) if p)
