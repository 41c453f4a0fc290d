"""The state directory is private: only this process's user may read it.

It holds the clones (their config names the remote), the state of every model, lock files and, for
a key file ssh would refuse, a private copy of the key. The long-running commands set the umask
`PRIVATE_UMASK` first, so that everything they and git create is private; `make_private` creates the
directory 0700 and takes group and other permissions off what an older version left there.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("ollama_gitops")

PRIVATE_UMASK = 0o077


def make_private(directory: Path) -> None:
    """Create `directory` (mode 0700) if it is missing; when the group or others may use it, take
    their permissions off it and everything under it. A file this process may not change (a volume
    owned by another user) is logged and left as it is.

    A directory that is already this user's alone is not walked: nobody else can reach what is
    under it, and a clone fetched every few minutes holds thousands of loose objects (walking them
    cost a no-op `reconcile --once` about eight fetches)."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = directory.stat()
    if info.st_uid == os.geteuid() and not info.st_mode & 0o077:
        return
    refused: list[str] = []
    _restrict(directory, refused)
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            _restrict(Path(root, name), refused)
    if refused:
        log.warning("action=state-dir-not-private paths=%s reason='their mode could not be changed: make the "
                    "state directory owned by this user, or mounted for it alone'", ",".join(refused[:5]))


def _restrict(path: Path, refused: list[str]) -> None:
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o077:
            return
        path.chmod(stat.S_IMODE(info.st_mode) & ~0o077)
    except FileNotFoundError:
        return  # removed meanwhile (a lock file, a temporary file)
    except OSError:
        refused.append(str(path))
