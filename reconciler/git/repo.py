"""Git access: a private clone of the models repository in the state directory.

Credentials travel only in the environment of the `git` child process (an SSH command line, or an
HTTP header in `GIT_CONFIG_*` variables, see gitcredentials.py): never in a URL, a config file, a
log line or an error.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .credentials import GitCredentials
from .remote import checked_out_fix, explain_git_output, local_path

if TYPE_CHECKING:
    # GitPython costs ~70 ms to import; fetching, reading the head and running git commands need only
    # git's command line, so a cycle that ends after the fetch (`reconcile --once` with nothing to do)
    # never imports it. It is imported where a commit or the object database is read (`repo`).
    import git

log = logging.getLogger("ollama_gitops.git")

__all__ = ["GIT_TIMEOUT", "PREVIEW_REFS", "BranchMissing", "CheckedOutBranch", "GitCredentials", "GitError", "GitRepo",
           "InvalidRef", "RefNotFound", "redact", "ref_problem"]

GIT_TIMEOUT = 120.0  # seconds; a remote that hangs must not hang the reconciler
PIPE_READ_BYTES = 64 * 1024  # what `run_piped` reads from one command and writes to the other at a time


class GitError(Exception):
    """A Git operation failed; the message is safe to show (credentials removed)."""


class BranchMissing(GitError):
    """The remote has no such branch (deleted, or not created yet); nothing may recreate it unasked."""


class InvalidRef(GitError):
    """A ref asked for that no repository could have (or that could pass for a git option)."""


class RefNotFound(GitError):
    """The remote has no branch, tag, ref or commit of that name."""


class CheckedOutBranch(GitError):
    """The remote is a working repository with the branch checked out: git refuses every push to it."""


_CHECKED_OUT = re.compile(r"refusing to update checked out branch|branch is currently checked out")
_NO_REMOTE_REF = re.compile(r"couldn't find remote ref|could not find remote ref")


PREVIEW_REFS = "refs/ollama-gitops/preview/"
"""Where `fetch_ref` fetches to, apart from the tracked branch (which it never moves); each ref is
removed once fetched."""
_REF_CHARS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._/+-]*")
_HEX_REF = re.compile(r"[0-9a-fA-F]{7,40}")
_OBJECT_ID = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")  # SHA-1 or SHA-256, as git writes them


def ref_problem(ref: str) -> str | None:
    """Why `ref` cannot name a branch, tag, ref or commit (None when it can), by git's
    check-ref-format rules, narrowed to characters that need no quoting and never start an option."""
    if not ref:
        return "the ref is empty"
    if len(ref) > 255:
        return "the ref is longer than 255 characters"
    if not _REF_CHARS.fullmatch(ref):
        return ("a ref is letters, digits and '._/+-', starting with a letter, a digit or '_' "
                f"(got {ref[:100]!r})")
    parts = ref.split("/")
    if ".." in ref or "" in parts or any(p.startswith(".") or p.endswith(".lock") for p in parts) or ref.endswith("."):
        return f"{ref!r} is not a valid Git ref name (see git check-ref-format)"
    return None


_REJECTED = re.compile(r"\[(remote )?rejected\]|non-fast-forward|fetch first|failed to update ref|cannot lock ref")
_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")


def redact(text: str, secrets: list[str] | tuple[str, ...] = ()) -> str:
    """`text` without credentials: URL user info and any of `secrets` are replaced by `***`."""
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


class GitRepo:
    """A bare clone of one branch of the models repository, fetched shallow."""

    def __init__(self, url: str, branch: str, path: Path, credentials: GitCredentials | None = None) -> None:
        # User info never reaches the clone's config: it travels with the other credentials.
        self.url, self.credentials = (credentials or GitCredentials()).for_remote(url)
        self.branch = branch
        self.path = path
        self._repo: git.Repo | None = None
        self._prepared = False  # the directory is a bare repository with its origin set (`_prepare`)
        self._fetched = False  # the tracking ref is known to be there (a fetch or a push set it)
        self.generation = 0  # bumped each time a broken clone is set aside and started again
        # Fetches and pushes both move the tracking ref; git refuses concurrent ref updates.
        self.lock = threading.RLock()

    @property
    def repo(self) -> git.Repo:
        """The clone, opened (created, or set aside and created again, see `repair`) on first use.

        Replaced when the clone is repaired: `generation` tells holders of the old one to open it again.
        """
        if self._repo is None:
            with self.lock:
                if self._repo is None:
                    import git

                    self._repo = git.Repo(str(self._prepare()))
        return self._repo

    def _prepare(self) -> Path:
        """The clone's directory, made a bare repository with `origin` at the URL if it is not one yet
        (set aside and started again if git cannot open it), with git's command line alone."""
        if not self._prepared:
            with self.lock:
                if not self._prepared:
                    if self.path.exists() and any(self.path.iterdir()):
                        problem = self._problem()
                        if problem is not None:
                            self._set_aside(problem)
                    if not (self.path / "HEAD").exists():
                        self.path.mkdir(parents=True, exist_ok=True)
                        self._local("init", "--quiet", "--bare")
                    origin = self._local("config", "--get", "remote.origin.url", check=False)
                    if origin is None:
                        self._local("remote", "add", "origin", self.url)
                    elif origin != self.url:
                        self._local("remote", "set-url", "origin", self.url)
                    self._prepared = True
        return self.path

    def _local(self, *args: str, check: bool = True) -> str | None:
        """Run a git command on the clone that reaches no remote (no credentials); its output, or
        None when it failed and `check` is false. Raises GitError when it failed and `check` is true."""
        try:
            result = subprocess.run(["git", "--git-dir", str(self.path), *args], capture_output=True,
                                    timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise GitError(f"git {args[0]} in {self.path} timed out after {GIT_TIMEOUT:.0f}s") from None
        if result.returncode != 0:
            if not check:
                return None
            output = result.stderr.decode("utf-8", "replace").strip() or f"exit code {result.returncode}"
            raise GitError(redact(f"git {args[0]} in {self.path} failed: {output}", self.credentials.secrets()))
        return result.stdout.decode("utf-8", "replace").strip()

    def _problem(self) -> str | None:
        """Why git cannot open the clone (a damaged HEAD or config, say), or None when it can.

        Asked by reading the tracking ref, which says on the way whether a fetch was made: a cycle
        that fetches into an existing clone needs no other command before its fetch."""
        try:
            result = subprocess.run(["git", "--git-dir", str(self.path), "for-each-ref", "--format=%(objectname)",
                                     self.tracking_ref], capture_output=True, timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None  # slow, not broken: leave it to the command that needs it
        if result.returncode == 0:
            self._fetched |= bool(result.stdout.strip())
            return None
        output = result.stderr.decode("utf-8", "replace").strip() or f"exit code {result.returncode}"
        return redact(output, self.credentials.secrets())

    def repair(self) -> bool:
        """If git cannot open the clone, set it aside and start a new one; returns whether it did.

        The clone is only a cache of the remote, so nothing is lost: the next fetch fills it again.
        """
        with self.lock:
            problem = self._problem() if self.path.exists() else None
            if problem is None:
                return False
            self._set_aside(problem)
            return True

    def _set_aside(self, problem: str) -> None:
        if self._repo is not None:
            self._repo.close()  # its cat-file processes still read the old directory
            self._repo = None
        self._prepared = self._fetched = False
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self.path.with_name(f"{self.path.name}.broken-{stamp}")
        suffix = 1
        while aside.exists():
            suffix += 1
            aside = self.path.with_name(f"{self.path.name}.broken-{stamp}-{suffix}")
        self.path.rename(aside)
        self.generation += 1
        log.warning("action=clone-repaired clone=%s problem=%r: git cannot open the private clone; set it aside "
                    "as %s and cloning again from %s (remove the old one once looked at)",
                    self.path, problem, aside.name, self.display_url)

    def close(self) -> None:
        """Stop GitPython's helper processes on the clone (it is opened again if used after)."""
        with self.lock:
            if self._repo is not None:
                self._repo.close()
                self._repo = None
            self._prepared = False  # opened again, it is checked again (git may not open it by then)

    @property
    def tracking_ref(self) -> str:
        return f"refs/remotes/origin/{self.branch}"

    @property
    def display_url(self) -> str:
        return redact(self.url, self.credentials.secrets())

    @property
    def _refspec(self) -> str:
        return f"+refs/heads/{self.branch}:{self.tracking_ref}"

    def fetch(self) -> str:
        """Fetch the branch and return its head commit. Raises GitError when the remote cannot be read.

        Only the first fetch is shallow: with `--depth`, git cannot see that it already has the
        remote's commit and transfers (and checks) a pack every time, so later fetches, most of
        which bring nothing, are ordinary incremental ones.
        """
        refspec = self._refspec
        with self.lock:
            try:
                return self._fetch(refspec)
            except BranchMissing:
                raise
            except GitError:
                # A clone git cannot open fails every fetch: repair it and fetch again, once.
                if not self.repair():
                    raise
                return self._fetch(refspec)

    def _fetch(self, refspec: str) -> str:
        shallow = ["--depth=1"] if not self.has_fetched() else []
        try:
            self.run("fetch", "--quiet", "--no-tags", *shallow, "origin", refspec,
                     action=f"fetch branch {self.branch!r} from {self.display_url}")
        except GitError as exc:
            if _NO_REMOTE_REF.search(str(exc)):
                raise BranchMissing(f"the branch {self.branch!r} is not in the remote repository "
                                    f"{self.display_url} (deleted, or not created yet); "
                                    f"{self._branches_there()}") from None
            raise
        return self.head()

    def fetch_again(self) -> str | None:
        """`fetch` into a clone that was fetched before, with the fetch as its one git command: the
        branch's head commit, or None (no command run) when the clone has no tracking ref yet. Raises
        GitError when the fetch fails, for whatever reason (a damaged clone, a changed remote, a
        missing branch): `fetch` checks, repairs and explains; this only tells the commit.

        For a process whose work may end after the fetch (`reconcile --once` with nothing to do,
        `uptodate`), so it leaves the clone as `fetch` would find it: no origin is set (the fetch is by
        URL, into the same tracking ref), nothing is repaired, GitPython is not opened.
        """
        with self.lock:
            if not self._tracking_ref_stored():
                return None
            # A fetch that succeeds writes FETCH_HEAD anew, the ref asked for its one line.
            self._run_in(self.path, "fetch", "--quiet", "--no-tags", "--end-of-options", self.url, self._refspec,
                         action=f"fetch branch {self.branch!r} from {self.display_url}")
            return self._fetched_head()

    def _tracking_ref_stored(self) -> bool:
        """Is the tracking ref in the clone, read as git's files backend stores refs
        (gitrepository-layout(5)): a file under `refs/`, else a line of `packed-refs`. No clone, or
        refs stored otherwise (reftable), is False: the caller then takes `fetch`, which asks git."""
        if (self.path / self.tracking_ref).is_file():
            return True
        try:
            packed = (self.path / "packed-refs").read_bytes()
        except OSError:
            return False
        return f" {self.tracking_ref}\n".encode() in packed

    def _fetched_head(self) -> str:
        """The commit the fetch just made brought for the branch, from its FETCH_HEAD: one line per
        ref fetched, `<object id> TAB [not-for-merge] TAB branch '<name>' of <url>` (what `git pull`
        reads). GitError when it does not say that of the branch."""
        try:
            line = (self.path / "FETCH_HEAD").read_text(encoding="utf-8", errors="replace").partition("\n")[0]
        except OSError as exc:
            raise GitError(f"git fetch left no FETCH_HEAD in {self.path}: {exc.strerror}") from None
        commit, _, rest = line.partition("\t")
        if not _OBJECT_ID.fullmatch(commit) or not rest.partition("\t")[2].startswith(f"branch '{self.branch}' of "):
            raise GitError(f"git fetch left a FETCH_HEAD in {self.path} that does not name branch {self.branch!r}")
        return commit

    def fetch_ref(self, ref: str) -> str:
        """Fetch `ref` (a branch, a tag, a full ref such as `refs/pull/7/head`, or a commit) and return
        its commit, without moving the tracked branch (it is fetched to a ref under `PREVIEW_REFS`,
        removed once fetched).

        A commit already in the clone is not fetched again (a short SHA is found only there). Raises
        InvalidRef for a name no ref can have, RefNotFound when the remote has no such ref or commit,
        GitError when the remote cannot be read."""
        problem = ref_problem(ref)
        if problem is not None:
            raise InvalidRef(problem)
        with self.lock:
            if _HEX_REF.fullmatch(ref):
                local = self._local_commit(ref)
                if local is not None:
                    return local
            name, sha = self._remote_ref(ref)
            if name is None:
                if len(ref) != 40 or not _HEX_REF.fullmatch(ref):
                    raise RefNotFound(f"no branch, tag or ref {ref!r} in {self.display_url}")
                name = sha = ref.lower()  # a commit: fetched by its id, as protocol v2 allows
            target = PREVIEW_REFS + (name.removeprefix("refs/") if name.startswith("refs/") else f"commits/{name}")
            if self._local_commit(sha) is None:
                # One commit is all a plan reads: --depth=1, whatever the branch's history. --refmap=
                # keeps git from also moving the remote-tracking ref of a branch fetched by name.
                try:
                    self.run("fetch", "--quiet", "--no-tags", "--depth=1", "--refmap=", "origin", f"+{name}:{target}",
                             action=f"fetch {ref!r} from {self.display_url}")
                except GitError as exc:
                    if name == sha and re.search(r"not our ref|unadvertised object|couldn't find remote ref|"
                                                 r"no such remote ref|could not find remote ref", str(exc)):
                        raise RefNotFound(f"no commit {ref!r} in {self.display_url}") from None
                    raise
                self._drop(target)
            commit = self._local_commit(sha)
            if commit is None:
                raise RefNotFound(f"{ref!r} in {self.display_url} does not name a commit")
            return commit

    def _drop(self, ref: str) -> None:
        """Remove a preview ref once fetched: its objects stay (git prunes unreachable objects only
        after two weeks), and refs left by every pull request ever planned would slow each fetch."""
        import git

        try:
            git.Reference.delete(self.repo, ref)
        except (OSError, ValueError) as exc:
            log.debug("action=preview-ref-kept ref=%s error=%r", ref, str(exc))

    def changed_paths(self, old: str, new: str, under: str = "models") -> list[str]:
        """The paths under `under` whose entries differ between two commits of the clone (added,
        removed, changed, or changed in kind), files one by one (`git diff-tree -r`, no renames)."""
        output = self.run("diff-tree", "-r", "-z", "--no-renames", "--name-only", old, new, "--", under,
                          action=f"compare {old[:12]} with {new[:12]}")
        return [path for path in output.split("\0") if path]

    def _local_commit(self, revision: str) -> str | None:
        """The full SHA of the commit `revision` names in the clone, or None (a tag is peeled)."""
        if len(revision) == 40:
            import git

            try:  # in-process through GitPython's running cat-file: no git command to start
                if self.repo.odb.info(bytes.fromhex(revision)).type == b"commit":
                    return revision.lower()
            except (ValueError, KeyError, git.BadObject, git.BadName):
                return None
        try:
            return self.run("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}",
                            action=f"look up {revision!r}") or None
        except GitError:
            return None

    def _remote_ref(self, ref: str) -> tuple[str | None, str | None]:
        """(full ref name, its commit or tag id) of the remote's ref that `ref` names, as git picks:
        a full ref as it is, else the branch, else the tag (peeled)."""
        listing = self.run("ls-remote", "origin", ref, action=f"look up {ref!r} in {self.display_url}")
        found: dict[str, str] = {}
        for line in listing.splitlines():
            sha, _, name = line.partition("\t")
            found[name] = sha
        for candidate in (ref, f"refs/heads/{ref}", f"refs/tags/{ref}"):
            if candidate.startswith("refs/") and candidate in found:
                return candidate, found.get(candidate + "^{}", found[candidate])
        return None, None

    def push(self, commit: str, expected: str) -> bool:
        """Push `commit` as the new head of the branch, only if the remote's head is still `expected`.

        Returns False when the remote refused because the branch moved (someone else pushed) or is
        gone: fetch and try again (a fetch says which). Raises GitError for anything else. The lease
        is what stops a push from creating a branch that was deleted from the remote, with an old
        head: a plain push would (a branch that does not exist takes any commit).
        """
        ref = f"refs/heads/{self.branch}"
        with self.lock:
            try:
                self.run("push", "--porcelain", f"--force-with-lease={ref}:{expected}", "origin", f"{commit}:{ref}",
                         action=f"push to branch {self.branch!r} of {self.display_url}")
            except GitError as exc:
                if _CHECKED_OUT.search(str(exc)):
                    path = local_path(self.url)
                    fix = checked_out_fix(path) if path is not None else "push to a bare repository instead"
                    raise CheckedOutBranch(
                        f"could not push to {self.display_url}: git refuses to update branch {self.branch!r} "
                        f"there because it is checked out in a working tree; {fix}") from None
                if _REJECTED.search(str(exc)):
                    return False
                raise
            import git

            try:
                self.repo.git.update_ref(self.tracking_ref, commit)
            except git.GitCommandError as exc:
                # The push landed: that is the answer. The next fetch brings the tracking ref along.
                log.warning("action=tracking-ref-update-failed commit=%s error=%r", commit[:12],
                            redact(str(exc), self.credentials.secrets()))
            return True

    def _branches_there(self) -> str:
        """`it has: main, dev` (the remote's branches), or why they could not be listed."""
        try:
            listing = self.run("ls-remote", "--heads", "origin", action=f"list the branches of {self.display_url}")
        except GitError as exc:
            return f"its branches could not be listed: {exc}"
        heads = [line.split("\t", 1)[1].removeprefix("refs/heads/") for line in listing.splitlines() if "\t" in line]
        return f"it has: {', '.join(sorted(heads))}" if heads else "it has no branch yet"

    def head(self) -> str:
        """The last fetched (or pushed) head commit of the branch. Raises ValueError when there is none.

        Read in-process once GitPython has the clone open (a load or a write did); until then with
        `git rev-parse`, rather than importing GitPython for one ref."""
        if self._repo is not None:
            import git

            return git.SymbolicReference.dereference_recursive(self._repo, self.tracking_ref)
        self._prepare()
        commit = self._local("rev-parse", "--verify", "--quiet", f"{self.tracking_ref}^{{commit}}", check=False)
        if not commit:
            raise ValueError(f"no {self.tracking_ref} in {self.path}")
        return commit

    def has_fetched(self) -> bool:
        self._prepare()  # which checks an existing clone by reading the tracking ref
        if not self._fetched:
            try:
                self.head()
            except ValueError:
                return False
            self._fetched = True  # the ref stays: fetches and pushes only move it
        return True

    def run(self, *args: str, action: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> str:
        """Run a git command in the clone with the credentials; errors become a safe GitError."""
        return self.run_bytes(*args, action=action, env=env, stdin=stdin).decode("utf-8", "replace").strip()

    def run_bytes(self, *args: str, action: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> bytes:
        """`run`, its output as git wrote it: for what can be megabytes (a tree of 100,000 files), no
        decoded copy."""
        git_dir = self._prepare()  # creates the clone on first use
        return self._run_in(git_dir, *args, action=action, env=env, stdin=stdin)

    def _run_in(self, git_dir: Path, *args: str, action: str, env: dict[str, str] | None = None,
                stdin: bytes | None = None) -> bytes:
        """`run_bytes` in `git_dir` as it is (not prepared)."""
        try:
            result = subprocess.run(["git", "--git-dir", str(git_dir), *args], input=stdin, capture_output=True,
                                    env=self._environment(git_dir, env), timeout=GIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise self._timed_out(action) from None
        if result.returncode != 0:
            raise self._failed(action, result.returncode, result.stderr + result.stdout)
        return result.stdout

    def run_piped(self, source: Sequence[str], sink: Sequence[str],
                  through: Callable[[Iterator[bytes]], Iterable[bytes]], *, action: str) -> str:
        """`git <source> | through | git <sink>` in the clone: the sink's output, as `run` gives it.
        What passes between the two is read and written a pipe's read at a time, never held whole (a
        folder of 100,000 files lists ~7 MB); errors as `run`'s, from whichever command failed."""
        git_dir = self._prepare()
        command, env = ["git", "--git-dir", str(git_dir)], self._environment(git_dir, None)
        pipe = subprocess.PIPE
        with subprocess.Popen([*command, *sink], stdin=pipe, stdout=pipe, stderr=pipe, env=env) as sink_process, \
                subprocess.Popen([*command, *source], stdout=pipe, stderr=pipe, env=env) as source_process:
            assert sink_process.stdin is not None and source_process.stdout is not None
            try:
                try:
                    for piece in through(iter(lambda: source_process.stdout.read(PIPE_READ_BYTES), b"")):
                        sink_process.stdin.write(piece)
                except BrokenPipeError:
                    pass  # the sink stopped reading: what it says is the error
                source_out, source_err = source_process.communicate(timeout=GIT_TIMEOUT)
                sink_out, sink_err = sink_process.communicate(timeout=GIT_TIMEOUT)
            except subprocess.TimeoutExpired:
                source_process.kill()
                sink_process.kill()
                raise self._timed_out(action) from None
        if source_process.returncode != 0:
            raise self._failed(action, source_process.returncode, source_err + source_out)
        if sink_process.returncode != 0:
            raise self._failed(action, sink_process.returncode, sink_err + sink_out)
        return sink_out.decode("utf-8", "replace").strip()

    def _environment(self, git_dir: Path, env: dict[str, str] | None) -> dict[str, str]:
        # The clone's directory is this process's own: where a key file that ssh would refuse is copied.
        return {**os.environ, **self.credentials.environment(os.environ, private_dir=Path(git_dir)), **(env or {})}

    def _timed_out(self, action: str) -> GitError:
        return GitError(redact(f"could not {action}: timed out after {GIT_TIMEOUT:.0f}s", self.credentials.secrets()))

    def _failed(self, action: str, returncode: int, said: bytes) -> GitError:
        output = said.decode("utf-8", "replace").strip()
        detail = output or f"exit code {returncode}"
        hint = self.credentials.explain(output) or explain_git_output(output)
        if hint:
            detail = f"{hint}; git said: {detail}"
        return GitError(redact(f"could not {action}: {detail}", self.credentials.secrets()))
