"""The models repository a command is given (`--repo`), or the embedded default: checked before
anything is made, and its URL."""

from __future__ import annotations

import logging

from .git.embedded import ensure_default_repo
from .git.remote import check_remote
from .settings import ConfigurationError, Settings

log = logging.getLogger("ollama_gitops")


def check_repository(settings: Settings, *, serves_writes: bool) -> None:
    """Refuse, before anything is made, a `--repo` that cannot work (ConfigurationError, one line);
    warn about one that only writes would trip on when this command makes no writes."""
    if settings.repo is None:
        return  # the embedded repository: made here, bare
    problem = check_remote(settings.repo, settings.branch)
    if problem is None:
        return
    if problem.warning:
        log.warning("%s", problem.message)
        return
    if problem.writes_only and not serves_writes:
        log.warning("%s (this command only reads it)", problem.message)
        return
    raise ConfigurationError(problem.message)


def repository_url(settings: Settings) -> str:
    """`--repo`, or the embedded default repository (created on first use)."""
    return settings.repo or str(ensure_default_repo(settings.state_dir, settings.branch))
