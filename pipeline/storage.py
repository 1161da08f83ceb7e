"""The one module that knows local paths from remote URIs.

Schemes: plain paths and `file://`; `s3://` (s3fs; `storage.endpoint_url` for S3-compatible servers
such as MinIO, Ceph or moto); `http(s)://` (read-only); `gs://` (gcsfs, extra `[gcs]`); `az://` and
`abfs://` (adlfs, extra `[azure]`); `hf://` (huggingface_hub). Every back end is an fsspec filesystem;
`resolve()` hands pyarrow a filesystem for datasets and Parquet.

Credentials come only from each back end's own chain (environment, profile, instance role, ...):
they never enter the config, and URLs we put in messages pass through `redact.redact`.

Transient failures (HTTP 429/5xx, S3 SlowDown/InternalError/RequestTimeout, dropped connections,
timeouts) are retried here with bounded exponential backoff and counted in `Storage.retries`; the
back ends' own retry layers are turned down to one attempt where they allow it, so the two never
multiply. A `Storage` is picklable (filesystems are created lazily in each process), so it travels
to Ray workers.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import importlib.util
import io
import logging
import os
import posixpath
import random
import re
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import pyarrow.fs as pafs

from .errors import causes
from .redact import redact

T = TypeVar("T")

TMP_SUFFIX = ".inprogress"

# scheme alias -> canonical scheme
_ALIASES = {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "https": "https", "http": "http"}
# canonical scheme -> (module to import, pip extra or None when it is a core dependency)
_BACKENDS = {
    "s3": ("s3fs", None),
    "http": ("aiohttp", None),
    "https": ("aiohttp", None),
    "gs": ("gcsfs", "gcs"),
    "az": ("adlfs", "azure"),
    "hf": ("huggingface_hub", None),
}
_READ_ONLY = {"http", "https"}
_OBJECT_STORES = {"s3", "gs", "az", "hf"}


class ReadOnlyError(OSError):
    """A write to a read-only scheme (http, https)."""


class StorageUnavailable(OSError):
    """A call still failing with transient errors after every retry: the store is overloaded or out
    of reach for now. Nothing is wrong with what was asked: a later attempt may succeed."""


class FileTooLarge(OSError):
    """A file bigger than the reader's limit, refused from its size before its bytes were read."""


class ConditionFailed(OSError):
    """A conditional replace found the object changed or gone (see `Storage.replace_if_version`)."""


# epoch seconds after which a storage call starts no new attempt (per thread: see Storage.deadline)
_DEADLINE: ContextVar[float | None] = ContextVar("storage_deadline", default=None)


# -- URIs ---------------------------------------------------------------------------------------


def scheme(uri: str) -> str:
    """The canonical scheme: `file` for plain paths; `s3a`->`s3`, `gcs`->`gs`, `abfs(s)`->`az`."""
    head, sep, _ = uri.partition("://")
    if not sep or "/" in head:
        return "file"
    head = head.lower()
    return _ALIASES.get(head, head)


def is_remote(uri: str) -> bool:
    return scheme(uri) != "file"


def is_s3(uri: str) -> bool:
    return scheme(uri) == "s3"


def is_file_uri(uri: str) -> bool:
    """`file://...`, the scheme in any case."""
    return uri[:7].lower() == "file://"


def local_path(uri: str) -> str:
    """A `file:` URI -> the local path it names, as RFC 8089 (and pathlib's `as_uri()`) writes one:
    `file:///p` or `file://localhost/p`, the scheme in any case, the path percent-encoded (`My%20Clips`).
    A plain path comes back as it is (a `%` in it is part of the name). `file://name/x`, which names
    no host Python or pyarrow would reach, stays the relative path `name/x` it was always read as."""
    if not is_file_uri(uri):
        return uri
    rest = uri[7:]
    host, slash, path = rest.partition("/")
    if host.lower() in ("", "localhost") and slash:
        rest = "/" + path
    return unquote(rest)


def join(base: str, rel: str) -> str:
    """Resolve `rel` against `base` (a directory path or URI prefix); absolute paths and URIs in
    `rel` win. `.` and `..` segments are resolved in both forms."""
    if "://" in rel or rel.startswith("/") or not base:
        return rel
    if is_file_uri(base):
        return base[:7] + join(base[7:], rel)
    if is_remote(base):
        head, _, rest = base.partition("://")
        root, _, path = rest.partition("/")
        joined = posixpath.normpath(posixpath.join("/" + path, rel)).lstrip("/")
        return f"{head}://{root}/{joined}"
    return os.path.normpath(os.path.join(os.path.expanduser(base), rel))


# -- transient errors ---------------------------------------------------------------------------

# 429 and 5xx (a CDN's 520-524 too), but for the two that say the request itself is not supported
_TRANSIENT_STATUS = {429} | set(range(500, 600)) - {501, 505}
_TRANSIENT_CODES = {
    "SlowDown",
    "InternalError",
    "RequestTimeout",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
}
_PERMANENT = (FileNotFoundError, PermissionError, FileExistsError, IsADirectoryError, NotADirectoryError)


def _error_code(e: BaseException) -> str | None:
    """The S3 error code of a botocore ClientError (or what s3fs made of one), else None."""
    resp = getattr(e, "response", None)
    if isinstance(resp, dict) and "Error" in resp:
        return resp["Error"].get("Code")
    return None


def _refused(e: BaseException) -> bool:
    """A connection that never opened: the server is down or the endpoint is wrong."""
    if isinstance(e, ConnectionRefusedError):
        return True
    name = type(e).__name__
    return name in ("EndpointConnectionError", "ClientConnectorError") or getattr(e, "errno", None) == (
        errno.ECONNREFUSED
    )


def _copy_one(fs: Any, kind: str, src: str, dst: str) -> None:
    """Copy one object in as few requests as the store allows, so a retry repeats little: on S3 a
    single CopyObject (fsspec's copy() lists and stats first; our result files are far below the
    5 GB limit of one CopyObject)."""
    if kind == "s3":
        from fsspec.asyn import sync

        sync(fs.loop, fs._copy_basic, src, dst)
    else:
        fs.cp_file(src, dst)


def _check_size(uri: str, size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise FileTooLarge(
            f"{redact(uri)}: {size / 2**20:.1f} MB ({size} bytes), over the limit of {max_bytes / 2**20:g} MB"
        )


def _read_http(fs: Any, url: str, max_bytes: int) -> bytes:
    """GET `url`; refuse it from its Content-Length before reading the body (the connection is then
    dropped), or once more than `max_bytes` arrived when the server sends no length. A HEAD would
    cost a second request, and presigned URLs signed for GET refuse it."""
    from fsspec.asyn import sync

    async def get() -> bytes:
        session = await fs.set_session()
        async with session.get(fs.encode_url(url), **fs.kwargs) as r:
            if r.status in (404, 410):
                raise FileNotFoundError(f"no such file: {redact(url)}")
            r.raise_for_status()
            if r.content_length is not None:
                _check_size(url, r.content_length, max_bytes)
            chunks, got = [], 0
            async for chunk in r.content.iter_chunked(1 << 20):
                chunks.append(chunk)
                got += len(chunk)
                if got > max_bytes:
                    raise FileTooLarge(
                        f"{redact(url)}: more than {max_bytes / 2**20:g} MB (the server sent no length)"
                    )
            return b"".join(chunks)

    return sync(fs.loop, get)


def _read_s3(fs: Any, uri: str, path: str, max_bytes: int) -> bytes:
    """One GetObject, refused from its ContentLength before the body is read (closing the body drops
    the connection): a HEAD first would add a round trip to every fetch. Like s3fs's own cat_file,
    through its `_call_s3`, which adds the request-wide arguments (requester pays, SSE) and maps
    errors (NoSuchKey -> FileNotFoundError, the botocore error kept as the cause)."""
    from fsspec.asyn import sync

    bucket, key, version = fs.split_path(path)

    async def get() -> bytes:
        versioned = {"VersionId": version} if version else {}
        resp = await fs._call_s3("get_object", Bucket=bucket, Key=key, **versioned)
        body = resp["Body"]
        try:
            _check_size(uri, int(resp.get("ContentLength") or 0), max_bytes)
            return await body.read()
        finally:
            body.close()

    return sync(fs.loop, get)


def _walk(top: str, maxdepth: int | None = None) -> list[str]:
    """Files under the local directory `top` (`maxdepth` levels: 1 is `top`'s own files), into
    symlinked folders (a corpus assembled with `ln -s`; fsspec's find lists such a link as a file and
    skips what is in it). A folder reached a second time (a link back up the tree, two links to one
    folder) is listed once."""
    seen: set[str] = set()
    out = []
    for d, dirs, names in os.walk(top, followlinks=True):
        real = os.path.realpath(d)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        rel = os.path.relpath(d, top)
        level = 0 if rel == "." else rel.count(os.sep) + 1  # folders below `top`
        if maxdepth is not None and level + 1 >= maxdepth:
            dirs[:] = []
        out.extend(os.path.join(d, n) for n in names)
    return out


def _local_glob(path: str) -> list[str]:
    """fsspec's glob over local files (the same root, depth and pattern), its files found by `_walk`."""
    from fsspec.utils import glob_translate

    at = min(i for i in (path.find(c) for c in "*?[") if i >= 0)
    root = path[: path.rindex("/", 0, at) + 1]
    depth = None if "**" in path else path[len(root) :].count("/") + 1
    pattern = re.compile(glob_translate(path))
    return [p for p in _walk(root, depth) if pattern.match(p)]


def _not_a_file(listed: str, web: bool) -> bool:
    """A listing entry that names no file: an object-store folder marker (a key ending in `/`, a
    console's "Create folder"; or `<folder>_$folder$`, the zero-byte key Hadoop's S3 connectors, EMRFS
    and so Spark on EMR write beside each folder they create), or on an http(s) index page a link to
    another view of the page (Apache's `?C=N;O=D` sorts)."""
    return listed.endswith(("/", "_$folder$")) or (web and "?" in listed)


class _RetryingReader(io.RawIOBase):
    """A remote file object whose reads go through `Storage._call`: each read seeks to where it
    started and is retried whole, so a dropped connection or a 503 in the middle of a Parquet footer
    or row group costs a retry, not the task."""

    def __init__(self, storage: Storage, uri: str, inner: Any) -> None:
        self._storage, self._uri, self._inner = storage, uri, inner
        self._pos = 0
        self._whole: memoryview | None = None  # the file's bytes, from a web server without ranges

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._inner.size}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        def once() -> bytes:
            if self._whole is None:
                self._inner.seek(self._pos)
                try:
                    return self._inner.read(size)
                except ValueError as e:
                    if "range requests" not in str(e):
                        raise
                    # a web server that ignores Range (Python's http.server, some CDNs): fetched once,
                    # whole. fsspec's advice, a stream from the start, cannot reach a Parquet footer
                    self._whole = memoryview(self._inner.fs.cat_file(self._inner.path))
            end = len(self._whole) if size < 0 else self._pos + size
            return bytes(self._whole[self._pos : end])

        data = self._storage._call("read", self._uri, once)
        self._pos += len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._inner.close()
        super().close()


def is_transient(e: BaseException, reached: bool = True) -> bool:
    """Whether retrying `e` may help. `reached`: this process has talked to the server before, so a
    refused connection means a restart rather than a wrong endpoint."""
    for x in causes(e):
        resp = getattr(x, "response", None)
        if isinstance(resp, dict) and "Error" in resp:  # botocore ClientError
            code = resp["Error"].get("Code", "")
            status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS
        status = getattr(x, "status", None)
        if isinstance(status, int) and type(x).__name__ == "ClientResponseError":  # aiohttp
            return status in _TRANSIENT_STATUS
        status = getattr(resp, "status_code", None)
        if isinstance(status, int):  # an error holding its HTTP response: huggingface_hub's, Azure's
            return status in _TRANSIENT_STATUS
        if _refused(x):
            return reached
        if isinstance(x, _PERMANENT):
            # fsspec's http info() raises FileNotFoundError `from` whatever failed, a 503 included
            return x.__cause__ is not None and is_transient(x.__cause__, reached)
        if isinstance(x, (ConnectionError, TimeoutError, socket.timeout, asyncio.TimeoutError)):
            return True
        if type(x).__name__ in (
            "ConnectionClosedError",
            "ReadTimeoutError",
            "ConnectTimeoutError",
            "ServerDisconnectedError",
            "ClientPayloadError",
            "ClientOSError",
            "IncompleteRead",
            "FSTimeoutError",
        ):
            return True
    return False


def _quiet_sdk_loggers() -> None:
    """botocore's DEBUG records print signed request headers (access key id, session token): keep
    them at INFO when they only inherit a DEBUG level from the root (`--log-level DEBUG`). A level
    set on them by name is a deliberate choice and is left alone."""
    for name in ("botocore", "aiobotocore"):
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET and logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


# -- Storage ------------------------------------------------------------------------------------


@dataclass
class Storage:
    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    profile: str | None = None
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0
    max_retries: int = 5
    retry_backoff_s: float = 0.5
    retry_backoff_max_s: float = 20.0
    # op -> retries made by this instance (a fresh count in each process it is shipped to)
    retries: dict[str, int] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self._fs: dict[str, Any] = {}
        self._arrow: dict[str, pafs.FileSystem] = {}
        self._reached = False

    @classmethod
    def from_config(cls, cfg: Any) -> Storage:
        return cls(
            endpoint_url=cfg.endpoint_url,
            region=cfg.region,
            anonymous=cfg.anonymous,
            profile=cfg.profile,
            connect_timeout_s=cfg.connect_timeout_s,
            request_timeout_s=cfg.request_timeout_s,
            max_retries=cfg.retries,
            retry_backoff_s=cfg.retry_backoff_s,
            retry_backoff_max_s=cfg.retry_backoff_max_s,
        )

    def __getstate__(self) -> dict[str, Any]:
        per_process = ("_fs", "_arrow", "_reached", "retries")  # rebuilt or restarted after unpickling
        return {k: v for k, v in self.__dict__.items() if k not in per_process}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.retries = {}
        self.__post_init__()

    # -- filesystems --------------------------------------------------------------------------

    def filesystem(self, uri: str) -> Any:
        """The fsspec filesystem for `uri`'s scheme (created once per process)."""
        s = scheme(uri)
        if s not in self._fs:
            self._fs[s] = self._make_fs(s)
        return self._fs[s]

    def _make_fs(self, s: str) -> Any:
        import fsspec

        if s == "file":
            return fsspec.filesystem("file", skip_instance_cache=True)
        if s not in _BACKENDS:
            raise ValueError(
                f"unsupported URI scheme {s}:// (supported: file, {', '.join(sorted(_BACKENDS))})"
            )
        module, extra = _BACKENDS[s]
        if importlib.util.find_spec(module) is None:
            hint = f"pip install 'emotion2vec-pipeline[{extra}]'" if extra else f"pip install {module}"
            raise ImportError(f"{s}:// URIs need the {module} package: {hint}")
        return getattr(self, f"_make_{s}" if s not in ("http", "https") else "_make_http")()

    def _make_s3(self) -> Any:
        import s3fs

        _quiet_sdk_loggers()

        client: dict[str, Any] = {}
        if self.region:
            client["region_name"] = self.region
        fs = s3fs.S3FileSystem(
            anon=self.anonymous,
            profile=self.profile,
            endpoint_url=self.endpoint_url,
            client_kwargs=client,
            # one attempt per call inside botocore: retries are ours
            config_kwargs={
                "connect_timeout": self.connect_timeout_s,
                "read_timeout": self.request_timeout_s,
                "retries": {"total_max_attempts": 1, "mode": "standard"},
            },
            # other processes write the same prefixes: never answer from a stale listing
            use_listings_cache=False,
            skip_instance_cache=True,
        )
        fs.retries = 1  # s3fs's own retry loop: a single attempt
        return fs

    def _make_http(self) -> Any:
        import aiohttp
        from fsspec.implementations.http import HTTPFileSystem

        timeout = aiohttp.ClientTimeout(
            total=None, connect=self.connect_timeout_s, sock_read=self.request_timeout_s
        )
        return HTTPFileSystem(skip_instance_cache=True, client_kwargs={"timeout": timeout})

    def _make_gs(self) -> Any:
        import gcsfs

        return gcsfs.GCSFileSystem(token="anon" if self.anonymous else None, skip_instance_cache=True)

    def _make_az(self) -> Any:
        import adlfs

        return adlfs.AzureBlobFileSystem(anon=self.anonymous or None, skip_instance_cache=True)

    def _make_hf(self) -> Any:
        from huggingface_hub import HfFileSystem

        return HfFileSystem(skip_instance_cache=True)

    def _path(self, uri: str) -> str:
        """`uri` as the path its filesystem expects."""
        s = scheme(uri)
        if s == "file":
            return os.path.abspath(os.path.expanduser(local_path(uri)))
        if s in _READ_ONLY:
            return uri
        head, _, rest = uri.partition("://")  # schemes are case-insensitive; fsspec strips them as written
        return self.filesystem(uri)._strip_protocol(head.lower() + "://" + rest)

    def _uri(self, like: str, path: str) -> str:
        """A filesystem path back in the form of `like` (the caller's URI)."""
        if not is_remote(like):
            # a file: URI in the form `_path` reads back: percent-encoded
            return like[:7] + quote(path) if is_file_uri(like) else path
        if scheme(like) in _READ_ONLY:
            return path
        return like.split("://", 1)[0] + "://" + path.lstrip("/")

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """-> (pyarrow filesystem, path inside it), for pyarrow datasets and Parquet."""
        s = scheme(uri)
        if s == "file":
            return self._arrow_fs(s, pafs.LocalFileSystem), self._path(uri)
        if s == "s3" and not self.profile:  # pyarrow's native S3 has no profile argument
            return self._arrow_fs(s, self._native_s3), self._path(uri)
        handler = pafs.FSSpecHandler(self.filesystem(uri))
        return self._arrow_fs(s, lambda: pafs.PyFileSystem(handler)), self._path(uri)

    def _arrow_fs(self, s: str, make: Callable[[], pafs.FileSystem]) -> pafs.FileSystem:
        if s not in self._arrow:
            self._arrow[s] = make()
        return self._arrow[s]

    def _native_s3(self) -> pafs.S3FileSystem:
        kw: dict[str, Any] = {
            "connect_timeout": self.connect_timeout_s,
            "request_timeout": self.request_timeout_s,
            "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=self.max_retries + 1),
            "anonymous": self.anonymous,
        }
        if self.endpoint_url:
            u = urlsplit(self.endpoint_url if "://" in self.endpoint_url else "https://" + self.endpoint_url)
            kw["endpoint_override"] = u.netloc.rsplit("@", 1)[-1] + u.path.rstrip("/")
            kw["scheme"] = u.scheme or "https"
        region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kw["region"] = region
        return pafs.S3FileSystem(**kw)

    # -- retries ------------------------------------------------------------------------------

    @staticmethod
    @contextmanager
    def deadline(until: float | None) -> Iterator[None]:
        """Storage calls of this thread inside the block start no attempt (first or retry) after
        the epoch time `until` (None: no deadline): they raise `TimeoutError` instead. An attempt
        already sent may still finish later, within the request timeout."""
        token = _DEADLINE.set(until)
        try:
            yield
        finally:
            _DEADLINE.reset(token)

    def _call(self, op: str, uri: str, fn: Callable[[], T]) -> T:
        """`fn()` with bounded retries of transient errors; a persistent one raises an OSError
        naming the (redacted) URI and how often it was tried."""
        attempt = 0
        until = _DEADLINE.get()
        while True:
            if until is not None and time.time() >= until:
                raise TimeoutError(f"{op} {redact(uri)}: its deadline passed after {attempt} attempts")
            try:
                out = fn()
                self._reached = True
                return out
            except Exception as e:
                if not is_transient(e, self._reached):
                    if isinstance(e, OSError):
                        raise
                    # botocore/aiohttp errors: callers handle storage failures as OSError
                    raise OSError(errno.EIO, self._failed(op, uri, e)) from e
                if attempt >= self.max_retries:
                    raise StorageUnavailable(errno.EIO, self._failed(op, uri, e, attempt + 1)) from e
                attempt += 1
                self.retries[op] = self.retries.get(op, 0) + 1
                delay = self._backoff(attempt)
                if until is not None:
                    delay = max(min(delay, until - time.time()), 0.0)
                time.sleep(delay)

    @staticmethod
    def _failed(op: str, uri: str, e: Exception, attempts: int = 1) -> str:
        tried = f"still failing after {attempts} attempts: " if attempts > 1 else ""
        return f"{op} {redact(uri)}: {tried}{type(e).__name__}: {redact(str(e))}"

    def _backoff(self, attempt: int) -> float:
        delay = min(self.retry_backoff_max_s, self.retry_backoff_s * 2 ** (attempt - 1))
        return delay * random.uniform(0.5, 1.0)  # jitter: workers that failed together spread out

    def _writable(self, uri: str) -> None:
        if scheme(uri) in _READ_ONLY:
            raise ReadOnlyError(f"http(s) is read-only: cannot write {redact(uri)}")

    # -- reading ------------------------------------------------------------------------------

    def read_bytes(
        self, uri: str, start: int | None = None, end: int | None = None, *, max_bytes: int | None = None
    ) -> bytes:
        """The whole file, or bytes start..end of it (end None: to the end). FileNotFoundError (also
        for an HTTP 404) or IsADirectoryError name `uri`. `max_bytes` (whole files): a bigger file
        raises FileTooLarge from its size, before its bytes are read: a stat locally, the response
        header over http(s) and S3 (one GET, its body left unread), a HEAD on other object stores."""
        path = self._path(uri)
        if not is_remote(uri):
            if os.path.isdir(path):
                raise IsADirectoryError(f"is a directory, not a file: {redact(uri)}")
            try:
                with open(path, "rb") as f:
                    if max_bytes is not None:
                        _check_size(uri, os.fstat(f.fileno()).st_size, max_bytes)
                    f.seek(start or 0)
                    return f.read() if end is None else f.read(max(end - (start or 0), 0))
            except FileNotFoundError:
                raise FileNotFoundError(f"no such file: {redact(uri)}") from None
        fs = self.filesystem(uri)
        if max_bytes is not None and scheme(uri) in _READ_ONLY:
            return self._call("read", uri, lambda: _read_http(fs, uri, max_bytes))
        if max_bytes is not None and not is_s3(uri):
            found = self.info(uri)
            if found["type"] == "file":
                _check_size(uri, found["size"], max_bytes)
        # s3fs would HEAD first to split big objects into parallel ranges: one GET is enough here
        kw = {"max_concurrency": 1} if is_s3(uri) else {}
        if start is not None or end is not None:
            kw.update(start=start, end=end)

        def read() -> bytes:
            if max_bytes is not None and is_s3(uri):
                return _read_s3(fs, uri, path, max_bytes)
            return fs.cat_file(path, **kw)

        try:
            return self._call("read", uri, read)
        except FileNotFoundError:
            if scheme(uri) not in _READ_ONLY and self._call("info", uri, lambda: fs.isdir(path)):
                raise IsADirectoryError(f"is a directory, not a file: {redact(uri)}") from None
            raise FileNotFoundError(f"no such file: {redact(uri)}") from None

    def open_input(self, uri: str) -> IO[bytes]:
        """A seekable binary file object (read in ranges: big files, Parquet footers). Opening and
        every read are retried like any other call (a read resumes from where it started)."""
        path = self._path(uri)
        if not is_remote(uri):
            return open(path, "rb")
        fs = self.filesystem(uri)
        try:
            f = self._call("open", uri, lambda: fs.open(path, "rb"))
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {redact(uri)}") from None
        return _RetryingReader(self, uri, f)  # type: ignore[return-value]

    def info(self, uri: str) -> dict[str, Any]:
        """{"type": "file"|"directory", "size": bytes, "etag": the object store's ETag or None}.
        FileNotFoundError if absent."""
        path = self._path(uri)
        fs = self.filesystem(uri)
        try:
            raw = self._call("info", uri, lambda: fs.info(path))
        except FileNotFoundError:
            raise FileNotFoundError(f"no such file: {redact(uri)}") from None
        return {
            "type": "directory" if raw.get("type") == "directory" else "file",
            "size": int(raw.get("size") or 0),
            "etag": (raw.get("ETag") or raw.get("etag") or "").strip('"') or None,
        }

    def exists(self, uri: str) -> bool:
        """A file or directory (on object stores: a key or a non-empty prefix) at `uri`."""
        if not is_remote(uri):
            return os.path.exists(self._path(uri))
        try:
            self.info(uri)
            return True
        except FileNotFoundError:
            return False

    def is_dir(self, uri: str) -> bool:
        if not is_remote(uri):
            return os.path.isdir(self._path(uri))
        fs, path = self.filesystem(uri), self._path(uri)
        try:
            return bool(self._call("info", uri, lambda: fs.isdir(path)))
        except PermissionError:
            # a role that may read objects but not list them (no s3:ListBucket): a key that answers
            # a HEAD is a file; where that fails too, the HEAD's own error says why
            if self.info(uri)["type"] == "file":
                return False
            raise

    def list_files(self, uri: str, suffix: str = "") -> list[str]:
        """Files under `uri` (recursive) whose name ends with `suffix`, skipping hidden (`.`/`_`)
        names as pyarrow datasets do. Sorted URIs in the form given."""
        fs, path = self.filesystem(uri), self._path(uri)
        if not is_remote(uri) and not os.path.isdir(path):
            return []
        found = (
            self._call("list", uri, lambda: fs.find(path, detail=False)) if is_remote(uri) else _walk(path)
        )
        base = path.rstrip("/")
        web = scheme(uri) in _READ_ONLY
        out = []
        for p in found:
            rel = p[len(base) :].lstrip("/") if p.startswith(base) else p
            if not p.endswith(suffix) or any(part.startswith((".", "_")) for part in rel.split("/")):
                continue
            if _not_a_file(p, web):
                continue
            out.append(self._uri(uri, p))
        return sorted(out)

    def glob(self, pattern: str) -> list[str]:
        """Files matching `pattern` (`*`, `?`, `[..]`; `**` crosses directories), sorted, in the
        pattern's form. Directories are left out."""
        if scheme(pattern) in _READ_ONLY and not any(c in urlsplit(pattern).path for c in "*?["):
            # in an http(s) URL `?` starts the query (a presigned URL's signature), not a wildcard
            fs = self.filesystem(pattern)
            try:
                self._call("info", pattern, lambda: fs.info(pattern))
            except FileNotFoundError as e:
                # fsspec says FileNotFoundError for any status: a 403 (an expired signature) is not "no match"
                cause = e.__cause__
                status = getattr(cause, "status", None)
                if isinstance(cause, Exception) and isinstance(status, int) and status not in (404, 410):
                    raise OSError(errno.EIO, self._failed("info", pattern, cause)) from None
                return []
            return [pattern]
        fs, path = self.filesystem(pattern), self._path(pattern)
        if not is_remote(pattern) and any(c in path for c in "*?["):
            return sorted(self._uri(pattern, p) for p in _local_glob(path))
        found = self._call("list", pattern, lambda: fs.glob(path, detail=True))
        web = scheme(pattern) in _READ_ONLY
        files = (p for p, i in found.items() if i.get("type") != "directory" and not _not_a_file(p, web))
        return sorted(self._uri(pattern, p) for p in files)

    # -- writing ------------------------------------------------------------------------------

    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """Write so that readers see either nothing or the whole file: a hidden temp file renamed
        into place locally; on object stores one PUT (atomic by itself)."""
        self._writable(uri)
        path = self._path(uri)
        if not is_remote(uri):
            tmp = self._local_temp(path, data)
            os.replace(tmp, path)
            return
        fs = self.filesystem(uri)
        self._call("write", uri, lambda: fs.pipe_file(path, data))

    def write_bytes_if_absent(self, uri: str, data: bytes) -> bool:
        """Create `uri` with `data` only if nothing is there; -> whether this call created it.

        Local: a hidden temp file hard-linked into place (atomic, fails if the name exists), else
        O_EXCL. S3: a conditional PUT (`If-None-Match: *`); if a retried PUT finds the object, it
        counts as ours when it holds exactly `data` (the first try may have landed). gs/az/hf:
        the back end's `mode="create"`, which gcsfs makes atomic and others emulate by checking
        first (racy)."""
        self._writable(uri)
        path = self._path(uri)
        if not is_remote(uri):
            return self._local_create(path, data)
        fs = self.filesystem(uri)
        before = self.retries.get("write", 0)
        try:
            self._call("write", uri, lambda: fs.pipe_file(path, data, mode="create"))
            return True
        except FileExistsError:
            if self.retries.get("write", 0) > before:
                return self.read_bytes(uri) == data
            return False

    def version(self, uri: str) -> str:
        """A token that changes whenever `uri` is rewritten: the ETag on S3, else a hash of the
        content. FileNotFoundError if absent."""
        if is_s3(uri):
            etag = self.info(uri)["etag"]
            if etag:
                return etag
        return "sha256:" + hashlib.sha256(self.read_bytes(uri)).hexdigest()

    def replace_if_version(self, uri: str, data: bytes, version: str) -> str:
        """Overwrite `uri` with `data` only if it still has `version` (from `version()` or an
        earlier call); -> the new version. Raises `ConditionFailed` when it changed or is gone.

        S3: a conditional PUT (`If-Match: <ETag>`), decided by the store; a retried PUT whose
        first try landed counts as ours when the object holds exactly `data`. Elsewhere (local
        files, gs, az, hf) best effort: the version is compared right before an atomic replace,
        and a writer that slips in between those two steps is overwritten."""
        self._writable(uri)
        if is_s3(uri) and not version.startswith("sha256:"):
            return self._put_if_match(uri, data, version)
        try:
            current = "sha256:" + hashlib.sha256(self.read_bytes(uri)).hexdigest()
        except FileNotFoundError:
            raise ConditionFailed(errno.ENOENT, f"{redact(uri)} is gone") from None
        if current != version:
            raise ConditionFailed(errno.EBUSY, f"{redact(uri)} was rewritten by someone else")
        self.write_bytes_atomic(uri, data)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def _put_if_match(self, uri: str, data: bytes, etag: str) -> str:
        fs, path = self.filesystem(uri), self._path(uri)
        before = self.retries.get("write", 0)
        try:
            out = self._call("write", uri, lambda: fs.pipe_file(path, data, IfMatch=f'"{etag}"'))
        except FileNotFoundError:
            raise ConditionFailed(errno.ENOENT, f"{redact(uri)} is gone") from None
        except OSError as e:
            if not any(_error_code(x) == "PreconditionFailed" for x in causes(e)):
                raise
            if self.retries.get("write", 0) > before and self.read_bytes(uri) == data:
                return self.version(uri)  # our first try landed; the retry found our own write
            raise ConditionFailed(errno.EBUSY, f"{redact(uri)} was rewritten by someone else") from None
        etag = out.get("ETag") if isinstance(out, dict) else None
        return etag.strip('"') if etag else self.version(uri)

    def _local_temp(self, path: str, data: bytes) -> str:
        d = os.path.dirname(path)
        # hidden and not ending in .parquet: invisible to datasets and globs until renamed
        tmp = os.path.join(d, f".{os.path.basename(path)}.{uuid.uuid4().hex}{TMP_SUFFIX}")

        def write() -> str:
            os.makedirs(d, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            return tmp

        try:
            return write()
        except FileNotFoundError:  # the folder went between makedirs and open: an emptied _staging/<unit>/
            return write()

    def _local_create(self, path: str, data: bytes) -> bool:
        tmp = self._local_temp(path, data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:  # file systems without hard links
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
                raise
        finally:
            os.unlink(tmp)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True

    def move(self, src: str, dst: str) -> None:
        """Rename locally (atomic); on object stores copy then delete (not atomic)."""
        self._writable(dst)
        self._writable(src)
        if not is_remote(src) and not is_remote(dst):
            d = self._path(dst)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            os.replace(self._path(src), d)
            return
        if scheme(src) != scheme(dst):
            self.write_bytes_atomic(dst, self.read_bytes(src))
        else:
            fs, s, d = self.filesystem(src), self._path(src), self._path(dst)
            try:
                self._call("write", dst, lambda: _copy_one(fs, scheme(src), s, d))
            except FileNotFoundError:
                raise FileNotFoundError(f"no such file: {redact(src)}") from None
        self.delete(src)

    def delete(self, uri: str) -> None:
        self._writable(uri)
        if not is_remote(uri):
            os.remove(self._path(uri))
            return
        fs, path = self.filesystem(uri), self._path(uri)
        self._call("delete", uri, lambda: fs.rm_file(path))

    def makedirs(self, uri: str) -> None:
        """Create a local directory; object stores have no directories (a no-op there)."""
        self._writable(uri)
        if not is_remote(uri):
            os.makedirs(self._path(uri), exist_ok=True)

    def remove_empty_dirs(self, uri: str) -> None:
        """Remove the directory `uri` and the directories under it that hold no file (local only:
        object stores have no directories). One that is not empty, or gone, is left as it is: a
        write task retried by Ray may be putting a file there."""
        if is_remote(uri):
            return
        for d, _, _ in sorted(os.walk(self._path(uri)), key=lambda w: -len(w[0])):
            try:
                os.rmdir(d)
            except OSError:
                pass

    def remove_stale_temp_files(self, uri: str, min_age_s: float = 0.0) -> int:
        """Delete temp files a killed writer left under the directory `uri` (local only: object-store
        writes leave no partial objects). A temp file lives only as long as one write, so one older
        than `min_age_s` has no writer left; younger ones may belong to a writer still at work (a
        second run trying the lease) and stay. Returns how many were deleted."""
        if is_remote(uri):
            return 0
        cutoff = time.time() - min_age_s
        n = 0
        for d, _, names in os.walk(self._path(uri)):
            for name in names:
                if not (name.startswith(".") and name.endswith(TMP_SUFFIX)):
                    continue
                path = os.path.join(d, name)
                try:
                    if os.stat(path).st_mtime <= cutoff:
                        os.remove(path)
                        n += 1
                except FileNotFoundError:
                    pass  # its writer renamed or removed it meanwhile
        return n
