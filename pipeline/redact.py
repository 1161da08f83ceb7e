"""The one redaction boundary: text that leaves the process passes through here.

Credentials never enter the config, but URLs may carry them: a presigned S3 URL (`X-Amz-Signature`,
`X-Amz-Credential`, `X-Amz-Security-Token`), a GCS signed URL (`X-Goog-Signature`), an Azure SAS
token (`sig=`), an API key in a query, or `user:password@` before a host. `input.manifest` and the
paths inside a manifest are such URLs, and library errors quote them.

The boundary has four doors, each calling `redact` / `redact_data`:
- the console: `console()` wraps `sys.stdout` / `sys.stderr` (our lines, the progress line, the
  lines Ray forwards from its workers) and every log record (whatever handler writes it);
- `_run.json` (`Output.write_run_json`) and `_lease.json` (the lease writer): `redact_data`;
- error rows: the write stage redacts the `error` and `path` columns (`redact_column`);
- default ids: a manifest without an id column names a row by its audio's path as written, which
  may be such a URL: the id is built through `redact_names` before any stage sees it, so the `id`
  column, the commit markers' error ids and every message quoting an id are clean.

What is redacted: the value of every query (or fragment) parameter whose name looks secret (so `sig`, `se`, `sv`
of a SAS token keep their names and only `sig` loses its value), also inside text and
percent-encoded once (a URL quoted in another URL's query), and the user info of any URL (not the
container that Azure's `abfs[s]://<container>@<account>...` URIs name there).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc

MASK = "***"

# a query parameter whose value is a secret: signatures, credentials, tokens, keys, passwords (also
# `pass` alone or as a name's last word: `pass=`, `db_pass=`, not `compass=`)
_SECRET_NAME = r"(?:[\w.-]*(?:sig|token|key|secret|passw|pwd|credential|auth)[\w.-]*|(?:[\w.-]*[_.-])?pass)"
# name=value after `?`, `&` or `;`, or after `#` (OAuth's implicit flow returns `#access_token=...` in
# the fragment), also percent-encoded (`%3F`, `%26`, `%3D`)
_SECRET_PARAM = re.compile(
    rf"(?P<head>(?:[?&;#]|%3[Ff]|%26)(?i:{_SECRET_NAME})(?:=|%3[Dd]))(?P<value>(?:(?!%26)[^&\s'\"<>#;,)\]}}\\])+)"
)
# user info: what sits between `scheme://` and the last `@` before the first `/` (a password may hold
# a raw `@`: clients split at the last one). Not in Azure's abfs[s]:// and wasb[s]:// URIs, where it is
# the container (`abfss://<container>@<account>.dfs.core.windows.net/...`); a scheme never starts
# right after a letter, so `bfss://` inside `abfss://` is not taken for one
_USERINFO = re.compile(
    r"(?P<head>(?<![A-Za-z])(?!(?i:abfss?|wasbs?)://)[A-Za-z][A-Za-z0-9+.-]*://)[^/?#\s'\"<>]+@"
)


def redact(text: str) -> str:
    """`text` with secret query values and URL user info replaced by `***`. Text without URLs or
    secret-looking parameters comes back unchanged."""
    if not isinstance(text, str) or ("=" not in text and "%3" not in text.upper() and "@" not in text):
        return text
    text = _SECRET_PARAM.sub(lambda m: m.group("head") + MASK, text)
    return _USERINFO.sub(lambda m: m.group("head") + MASK + "@", text)


def redact_data(node: Any) -> Any:
    """Every string in a JSON-like structure (dicts, lists, tuples) redacted."""
    if isinstance(node, dict):
        return {k: redact_data(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [redact_data(v) for v in node]
    return redact(node) if isinstance(node, str) else node


def redact_column(table: pa.Table, name: str) -> pa.Table:
    """`table` with the string column `name` redacted (absent: unchanged). Rows whose value needs no
    change are not copied through Python."""
    at = table.schema.get_field_index(name)
    if at < 0 or table.num_rows == 0:
        return table
    column = table.column(at)
    suspect = pc.match_substring_regex(column, _SUSPECT)
    if not pc.any(suspect).as_py():
        return table
    values = [redact(v) for v in column.to_pylist()]
    return table.set_column(at, table.field(at), pa.array(values, column.type))


def redacted_name(text: str) -> str:
    """A name that may be a URL with secrets in it (a default id) -> the name to write: `text` as it
    is when `redact` leaves it alone; else the redacted text plus `#` and the first 12 hex digits of
    the SHA-256 of the whole text. The hash keeps two names apart that differ only in their secrets,
    and is the same on every rerun of the same manifest; it does not reveal the secret."""
    clean = redact(text)
    if clean == text:
        return text
    return f"{clean}#{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


def redact_names(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """`redacted_name` of every string (nulls stay); rows that need no change are not copied through
    Python."""
    if len(values) == 0 or not pc.any(pc.match_substring_regex(values, _SUSPECT)).as_py():
        return values
    return pa.array([None if v is None else redacted_name(v) for v in values.to_pylist()], pa.string())


_SUSPECT = r"[=@]|%3[dD]"  # what any redaction needs (redact's own quick test, as a regex)


# -- the console -------------------------------------------------------------------------------------


class RedactingStream:
    """A text stream that redacts what it writes, a line at a time (a URL split over two writes of
    one line is still seen whole); `flush()` writes a partial line as it is."""

    def __init__(self, inner: TextIO) -> None:
        self.inner = inner
        self._pending = ""
        self._lock = threading.Lock()  # Ray's log thread and the job's own lines write at once

    def write(self, s: str) -> int:
        with self._lock:
            text = self._pending + s
            cut = text.rfind("\n") + 1
            self._pending = text[cut:]
            if cut:
                self.inner.write(redact(text[:cut]))
        return len(s)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self.inner.write(redact(self._pending))
                self._pending = ""
        self.inner.flush()

    def __getattr__(self, name: str) -> Any:  # encoding, isatty, fileno ...
        return getattr(self.inner, name)


def stream(inner: TextIO) -> TextIO:
    """`inner` behind the boundary (once: a stream already behind it is returned as it is)."""
    return inner if isinstance(inner, RedactingStream) else RedactingStream(inner)  # type: ignore[return-value]


def _record_factory(make: Any) -> Any:
    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string: the handler reports it as usual
            return record
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[0] is not None:
            # formatted once here, redacted; handlers reuse exc_text instead of formatting again
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    factory.redacting = True  # type: ignore[attr-defined]
    return factory


@contextlib.contextmanager
def console() -> Iterator[None]:
    """Inside: `sys.stdout`, `sys.stderr` and every log record pass through `redact`. Both are put
    back on exit."""
    old_out, old_err = sys.stdout, sys.stderr
    old_factory = logging.getLogRecordFactory()
    sys.stdout, sys.stderr = stream(old_out), stream(old_err)
    if not getattr(old_factory, "redacting", False):
        logging.setLogRecordFactory(_record_factory(old_factory))
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = old_out, old_err
        logging.setLogRecordFactory(old_factory)
