"""The Ollama edge: the few calls the reconciler makes, behind a small interface.

`ModelServer` is what the core needs; `OllamaServer` implements it with the official `ollama`
client. Errors come out as two kinds the core can act on: the server is unreachable (retry the whole
cycle later, change nothing), or one model's operation failed (Ollama's own message).
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

from ..models.naming import normalize_reference
from ..plan import InstalledModel

if TYPE_CHECKING:
    import httpx
    import ollama

ProgressCallback = Callable[[int, int], None]
"""Called with (completed bytes, total bytes) as a pull streams."""


class ServerUnreachable(Exception):
    """Ollama could not be reached at all."""


class ModelOperationFailed(Exception):
    """Ollama answered, and refused or failed the operation; the message is Ollama's."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class Tags:
    """One `GET /api/tags`: a digest of its body, and its models (None when the body was byte-identical
    to the one the caller named: nothing was decoded)."""

    digest: str
    models: dict[str, InstalledModel] | None


class ModelServer(Protocol):
    url: str

    def installed(self) -> dict[str, InstalledModel]:
        """The models on the server, keyed by normalised reference."""

    def pull(self, reference: str, progress: ProgressCallback) -> InstalledModel:
        """Pull a model, reporting progress; returns when it is installed, with what the pull itself
        says of it (see `OllamaServer.pull`), no listing."""

    def delete(self, reference: str) -> bool:
        """Delete a model; False when the server did not have it (which counts as done)."""


class OllamaServer:
    """A `ModelServer` backed by one Ollama server, through the official client."""

    def __init__(self, url: str, *, timeout: float = 30.0, pull_read_timeout: float = 600.0) -> None:
        self.url = url.rstrip("/")
        self._timeout, self._pull_read_timeout = timeout, pull_read_timeout
        # Made when first used: each costs a TLS context (a quarter of a second on a loaded machine),
        # which a cycle that ends after the fetch (`reconcile --once`, nothing to do) never needs.
        self._made: dict[str, ollama.Client | httpx.Client] = {}
        self._making = threading.Lock()

    def _connection(self, which: str) -> Any:
        # Imported here, with the first connection: the `ollama` client (and its pydantic models) is
        # a third of what `reconcile` imports, and a cycle that ends after the fetch never needs it.
        import httpx
        import ollama

        with self._making:
            if which not in self._made:
                if which == "http":
                    self._made[which] = httpx.Client(base_url=self.url, timeout=self._timeout)
                else:  # a pull streams for as long as the download takes; only a stall should time it out
                    timeout = httpx.Timeout(self._timeout, read=self._pull_read_timeout) if which == "pull" \
                        else self._timeout
                    self._made[which] = ollama.Client(host=self.url, timeout=timeout)
            return self._made[which]

    @property
    def _client(self) -> ollama.Client:
        return self._connection("api")

    @property
    def _http(self) -> httpx.Client:
        return self._connection("http")

    @property
    def _pull_client(self) -> ollama.Client:
        return self._connection("pull")

    def close(self) -> None:
        """Close the connections to the server."""
        with self._making:
            made, self._made = list(self._made.values()), {}
        for client in made:
            client.close()

    def installed(self) -> dict[str, InstalledModel]:
        """The models on the server, keyed by normalised reference."""
        models = self.tags().models
        assert models is not None
        return models

    def tags(self, unless: str | None = None, keep: Keep | None = None) -> Tags:
        """`GET /api/tags`, decoded unless its body's digest is `unless` (a resync of a server where
        nothing changed then costs the request and a hash, not a decode: Ollama has no ETag there).

        The digest is the caller's to keep: this client stays stateless, as others (the plan preview)
        list through it too. `/api/tags` is read directly rather than through `Client.list()`: the
        client validates a pydantic model per entry, which costs 15 times the request itself with ten
        thousand models. Each entry becomes an `InstalledModel` as soon as it is decoded, so that a
        listing of a hundred thousand models is never held as a hundred thousand dicts at once; and
        the body is decoded piece by piece (`decode_listing`), never made into one string of every
        entry (as `json.loads` would). With no digest to compare with (a first listing: a cold
        start's), each piece is decoded as it is read and not kept; else the pieces are kept until
        the digest says whether to decode them. `keep(entry)` gives what is kept of each entry as it
        is decoded (an equal one: see `Fleet`)."""
        if unless is None:
            streamed = self._streamed_tags(keep)
            if streamed is not None:
                return streamed
        pieces = self._get_pieces("/api/tags")
        digest = _digest(pieces)
        if digest == unless:
            return Tags(digest, None)
        return Tags(digest, decode_listing(pieces, keep))

    def _streamed_tags(self, keep: Keep | None = None) -> Tags | None:
        """`GET /api/tags` decoded as it is read; None for a body of another shape than Ollama's
        (to be read again and decoded whole)."""
        hasher = hashlib.blake2b(digest_size=16)
        try:
            models = self._stream("/api/tags", lambda chunks: _keyed(_entries(_hashed(chunks, hasher)), keep))
        except _Unusual:
            return None
        return Tags(hasher.hexdigest(), models)  # type: ignore[arg-type]

    def version(self) -> str:
        """Ollama's version (`GET /api/version`)."""
        return str(self._get("/api/version").json().get("version") or "")

    def _get_pieces(self, path: str) -> list[bytes]:
        """`GET path`'s body, as the pieces it was read in; errors as `_get`'s."""
        return self._stream(path, list)  # type: ignore[return-value]

    def _stream(self, path: str, consume: Callable[[Iterator[bytes]], object]) -> object:
        """What `consume` makes of `GET path`'s body, read piece by piece; errors as `_get`'s."""
        import ollama

        def get() -> object:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ollama.ResponseError(_error_text(response), response.status_code)
                return consume(response.iter_bytes())

        return self._call(get)

    def _get(self, path: str) -> httpx.Response:
        """`GET path`, its errors as the other calls' (`ServerUnreachable`, `ModelOperationFailed`)."""
        import ollama

        def get() -> httpx.Response:
            response = self._http.get(path)
            if response.status_code >= 400:
                raise ollama.ResponseError(_error_text(response), response.status_code)
            return response

        return self._call(get)  # type: ignore[return-value]

    def pull(self, reference: str, progress: ProgressCallback) -> InstalledModel:
        """Pull `reference`; the model as the stream leaves it, without listing the server.

        Ollama streams progress per blob of the manifest, its layers and then its config, each line
        with the blob's `digest` and `total` (a blob already on disk too, in one line of its whole
        size; the transfer path of tensor models as one pseudo-blob of them all), so the sum of the
        blobs' totals is the size `/api/tags` gives (`Manifest.Size`: layers plus config; a blob
        listed twice in one manifest is counted once here, and the next listing corrects that). The
        manifest's digest, which `/api/tags` shows, is in no line: it is `""`, unknown, until a
        listing gives it. `modified_at` is unknown too."""
        layers: dict[str, tuple[int, int]] = {}

        def stream() -> None:
            for update in self._pull_client.pull(reference, stream=True):
                if update.digest and update.total:
                    layers[update.digest] = (update.completed or 0, update.total)
                    progress(sum(c for c, _ in layers.values()), sum(t for _, t in layers.values()))

        self._call(stream)
        return InstalledModel(reference, sum(total for _, total in layers.values()), "")

    def delete(self, reference: str) -> bool:
        try:
            self._call(lambda: self._client.delete(reference))
        except ModelOperationFailed as exc:
            if exc.status_code == 404:
                return False
            raise
        return True

    def has_blob(self, digest: str) -> bool:
        """Does the server hold the blob `digest` (`sha256:<64 hex>`)? Ollama's `HEAD /api/blobs/:digest`:
        200 yes, 404 no. An invalid digest (Ollama's 400) or any other answer is `ModelOperationFailed`;
        no connection is `ServerUnreachable`, as for the other calls."""
        import ollama

        def head() -> bool:
            response = self._http.head(f"/api/blobs/{quote(digest, safe=':')}")
            if response.status_code == 200:
                return True
            if response.status_code == 404:
                return False
            # A HEAD answer has no body to carry Ollama's message: say what was asked and what came back.
            raise ollama.ResponseError(f"HEAD /api/blobs/{digest}: HTTP {response.status_code}"
                                       + (" (invalid digest format)" if response.status_code == 400 else ""),
                                       response.status_code)

        return bool(self._call(head))

    def _call(self, operation: Callable[[], object]) -> object:
        import httpx
        import ollama

        try:
            return operation()
        except ollama.ResponseError as exc:
            raise ModelOperationFailed(exc.error, exc.status_code) from None
        except (ConnectionError, httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(f"Ollama is not reachable at {self.url}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            # The connection broke or stalled mid-operation (e.g. mid-pull): the model's operation failed.
            raise ModelOperationFailed(f"connection to Ollama at {self.url} failed: {_reason(exc)}") from None


def _digest(pieces: Iterable[bytes]) -> str:
    """The digest of a body given in pieces (what `Tags.digest` is)."""
    hasher = hashlib.blake2b(digest_size=16)
    for piece in pieces:
        hasher.update(piece)
    return hasher.hexdigest()


def _hashed(pieces: Iterable[bytes], hasher: Any) -> Iterator[bytes]:
    for piece in pieces:
        hasher.update(piece)
        yield piece


def _installed(entry: dict) -> InstalledModel:
    """An `/api/tags` entry. Its reference is not interned: a record made from a listing takes the
    listing's string (`plan.applied_spec`), and a listing decoded again keeps its entries of the
    models that did not change (`Fleet`), so each model's string is held once without a slot per
    model in the interpreter's table of interned strings (at 10,000 models in serve, its growth
    was 1.8 MiB)."""
    return InstalledModel(entry.get("model") or entry.get("name") or "", int(entry.get("size") or 0),
                          entry.get("digest") or "", modified_seconds(entry.get("modified_at")))


def modified_seconds(timestamp: object) -> int | None:
    """Ollama's `modified_at` (RFC 3339 with nanoseconds, any offset) in whole seconds since the
    epoch; None when it is missing or unreadable (not a string, not a time, or out of range in UTC)."""
    if not isinstance(timestamp, str) or not timestamp:
        return None
    # The fraction is dropped (the seed writes whole seconds; it never carries into them), by string
    # slicing rather than a regex per model, and Python 3.10's fromisoformat takes neither `Z` nor
    # more than six fractional digits. What is left is the same for every model pulled in the same
    # second, and the listing is sorted by that time: a few cached are enough for such models to
    # share one int (a cache of thousands would outweigh the ints it saves).
    text = timestamp.replace("Z", "+00:00")
    if text[19:20] == ".":
        offset = text[20:].lstrip("0123456789")
        if len(offset) < len(text) - 20:  # a dot without digits is left for fromisoformat to refuse
            text = text[:19] + offset
    return _epoch_seconds(text)


# What the seed's times can be: a UTC time of years 1 to 9999, in seconds since the epoch.
_FIRST, _LAST = (int(moment.replace(microsecond=0, tzinfo=timezone.utc).timestamp())
                 for moment in (datetime.min, datetime.max))


@lru_cache(maxsize=16)
def _epoch_seconds(text: str) -> int | None:
    try:
        # (An aware datetime's timestamp is exact arithmetic, whole seconds here; one without an
        # offset is local time, as before.)
        seconds = int(datetime.fromisoformat(text).timestamp())
    except (ValueError, OverflowError, OSError):
        return None
    return seconds if _FIRST <= seconds <= _LAST else None


def _installed_or_object(entry: dict) -> object:
    # Every JSON object of the listing, innermost first: an entry names its model; `details` and the
    # top level do not.
    return _installed(entry) if "model" in entry or "name" in entry else entry


class _Unusual(Exception):
    """A body that is not Ollama's `{"models": [entry, ...]}`: decoded whole instead."""


_LISTING_START = re.compile(r'\s*\{\s*"models"\s*:\s*\[')
_GAP = re.compile(r"\s*(,?)\s*")  # between entries: a comma (none before the first), spaces
_LISTING_END = re.compile(r"\s*\}\s*")  # after the list's `]`
_ENTRY = json.JSONDecoder(object_hook=_installed_or_object)


def decode_listing(pieces: Sequence[bytes], keep: Keep | None = None) -> dict[str, InstalledModel]:
    """The models of an `/api/tags` body given as the pieces it was read in, keyed by normalised
    reference. Each entry is decoded as soon as its text is in, so what is held besides the pieces
    is an entry's text, not the whole body as a string (`json.loads` makes one). A body of another
    shape (other fields, say) is decoded whole, as before; one that is not JSON is a ValueError."""
    try:
        return _keyed(_entries(pieces), keep)
    except _Unusual:
        pass
    listing = json.loads(b"".join(pieces), object_hook=_installed_or_object)
    entries = (listing.get("models") if isinstance(listing, dict) else None) or []
    # (An entry that names no model is left a dict by the hook.)
    return _keyed((model if isinstance(model, InstalledModel) else _installed(model) for model in entries), keep)


Keep = Callable[[InstalledModel], InstalledModel]
"""What a listing keeps of each entry it decodes: the entry, or one equal to it (made of other objects)."""


def _keyed(models: Iterable[InstalledModel], keep: Keep | None = None) -> dict[str, InstalledModel]:
    """`models` (each as `keep` gives it) by normalised reference (its very string when in normal form)."""
    return {normalize_reference(model.reference): model for model in (map(keep, models) if keep else models)}


def _entries(pieces: Iterable[bytes]) -> Iterator[InstalledModel]:
    """The entries of a `{"models": [...]}` body, each as soon as its text is in; `_Unusual` for a
    body of another shape (nothing is decoded whole here)."""
    text_of = codecs.getincrementaldecoder("utf-8")()
    buffer, position, started, ended, first = "", 0, False, False, True
    for piece in itertools.chain(pieces, (None,)):
        final = piece is None
        try:
            buffer = buffer[position:] + text_of.decode(piece or b"", final=final)
        except UnicodeDecodeError:
            raise _Unusual from None
        position = 0
        if not started:
            match = _LISTING_START.match(buffer)
            if match is None:
                if final or not '{"models":['.startswith("".join(buffer.split())):
                    raise _Unusual
                continue  # the start may still be coming
            position, started = match.end(), True
        while not ended:
            gap = _GAP.match(buffer, position)
            assert gap is not None  # (it matches the empty string)
            at = gap.end()
            if at == len(buffer):
                break  # more to come
            if buffer[at] == "]":
                if gap.group(1):
                    raise _Unusual  # a comma before the end
                position, ended = at + 1, True
                break
            if buffer[at] != "{" or bool(gap.group(1)) == first:
                raise _Unusual  # not an object, a comma before the first entry or none between two
            try:
                entry, end = _ENTRY.raw_decode(buffer, at)
            except ValueError:
                if final:
                    raise _Unusual from None
                break  # the rest of this entry is in the next piece
            position, first = end, False
            yield entry if isinstance(entry, InstalledModel) else _installed(entry)  # (one that names no model)
    if not ended or not _LISTING_END.fullmatch(buffer, position):
        raise _Unusual


def _error_text(response: httpx.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
