"""The one module that knows local paths from `s3://` URIs.

Everything goes through `pyarrow.fs` (already our Parquet engine): `LocalFileSystem` for paths,
`S3FileSystem` for `s3://` URIs, with `storage.endpoint_url` for S3-compatible stores (MinIO, Ceph,
moto). Credentials come only from the standard AWS chain (environment, profile, instance role);
they never enter the config, logs or `_run.json`. A `Storage` is picklable (it rebuilds its
filesystems lazily), so it travels to Ray workers.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs


def is_s3(uri: str) -> bool:
    return uri.startswith(("s3://", "s3a://"))


def join(base: str, rel: str) -> str:
    """Resolve `rel` against `base` (a directory path or s3:// prefix); absolute paths and URIs in
    `rel` win."""
    if "://" in rel or rel.startswith("/") or not base:
        return rel
    if is_s3(base):
        return base.rstrip("/") + "/" + rel.lstrip("/")
    return os.path.normpath(os.path.join(os.path.expanduser(base), rel))


TMP_SUFFIX = ".inprogress"


@dataclass
class Storage:
    endpoint_url: str | None = None
    region: str | None = None
    anonymous: bool = False
    profile: str | None = None
    connect_timeout_s: float = 10.0
    request_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        self._s3: pafs.S3FileSystem | None = None
        self._local = pafs.LocalFileSystem()

    @classmethod
    def from_config(cls, cfg: Any) -> Storage:
        return cls(
            endpoint_url=cfg.endpoint_url,
            region=cfg.region,
            anonymous=cfg.anonymous,
            profile=cfg.profile,
            connect_timeout_s=cfg.connect_timeout_s,
            request_timeout_s=cfg.request_timeout_s,
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_s3"] = None
        state.pop("_local", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._local = pafs.LocalFileSystem()

    # -- filesystems --------------------------------------------------------------------------

    def _s3fs(self) -> pafs.S3FileSystem:
        if self._s3 is None:
            kw: dict[str, Any] = {
                "connect_timeout": self.connect_timeout_s,
                "request_timeout": self.request_timeout_s,
            }
            if self.endpoint_url:
                u = urlparse(
                    self.endpoint_url if "://" in self.endpoint_url else "https://" + self.endpoint_url
                )
                kw["endpoint_override"] = u.netloc + u.path.rstrip("/")
                kw["scheme"] = u.scheme or "https"
                kw["force_virtual_addressing"] = False
            region = self.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
            if region:
                kw["region"] = region
            if self.anonymous:
                kw["anonymous"] = True
            if self.profile:
                # pyarrow has no profile argument; the AWS SDK reads AWS_PROFILE.
                os.environ.setdefault("AWS_PROFILE", self.profile)
            self._s3 = pafs.S3FileSystem(**kw)
        return self._s3

    def resolve(self, uri: str) -> tuple[pafs.FileSystem, str]:
        """-> (filesystem, path inside it)."""
        if is_s3(uri):
            return self._s3fs(), uri.split("://", 1)[1]
        if uri.startswith("file://"):
            uri = uri[len("file://") :]
        return self._local, os.path.abspath(os.path.expanduser(uri))

    # -- operations ---------------------------------------------------------------------------

    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.resolve(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no such file: {uri}")
        if info.type == pafs.FileType.Directory:
            raise IsADirectoryError(f"is a directory, not a file: {uri}")
        with fs.open_input_stream(path) as f:
            return f.read()

    def exists(self, uri: str) -> bool:
        fs, path = self.resolve(uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_bytes_atomic(self, uri: str, data: bytes) -> None:
        """Write so that readers see either nothing or the whole file: a hidden temp file renamed
        into place locally; on S3 a single PUT/multipart upload, which is atomic by itself."""
        fs, path = self.resolve(uri)
        if isinstance(fs, pafs.S3FileSystem):
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        d = posixpath.dirname(path)
        fs.create_dir(d, recursive=True)
        # hidden and not ending in .parquet: invisible to datasets and globs until renamed
        tmp = posixpath.join(d, f".{posixpath.basename(path)}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)

    def write_bytes_if_absent(self, uri: str, data: bytes) -> bool:
        """Create `uri` holding `data` only if nothing is there; -> whether this call created it.
        Of concurrent callers exactly one gets True. Locally: a fully written hidden temp file is
        hard-linked into place (link(2) fails if the name exists), so readers never see a partial
        file. Only local paths for now."""
        fs, path = self.resolve(uri)
        if isinstance(fs, pafs.S3FileSystem):
            raise NotImplementedError(f"create-if-absent is not implemented for S3 yet: {uri}")
        d = os.path.dirname(path)
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".{os.path.basename(path)}.{uuid.uuid4().hex}{TMP_SUFFIX}")
        with open(tmp, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)

    def list_files(self, uri: str, suffix: str = "") -> list[str]:
        """Files under `uri` (recursive) whose name ends with `suffix`, skipping hidden (`.`/`_`)
        names as pyarrow datasets do. Returns URIs in the form given."""
        fs, path = self.resolve(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            return []
        sel = pafs.FileSelector(path, recursive=True, allow_not_found=True)
        out = []
        for fi in fs.get_file_info(sel):
            if fi.type != pafs.FileType.File or not fi.path.endswith(suffix):
                continue
            rel = fi.path[len(path) :].lstrip("/")
            if any(part.startswith((".", "_")) for part in rel.split("/")):
                continue
            out.append(join(uri, rel) if is_s3(uri) else fi.path)
        return sorted(out)

    def remove_stale_temp_files(self, uri: str) -> int:
        """Delete temp files a killed writer left in the directory `uri` (local only: S3 writes
        leave no partial objects). Returns how many."""
        fs, path = self.resolve(uri)
        if isinstance(fs, pafs.S3FileSystem) or fs.get_file_info(path).type != pafs.FileType.Directory:
            return 0
        stale = [
            fi.path
            for fi in fs.get_file_info(pafs.FileSelector(path, recursive=True))
            if fi.type == pafs.FileType.File
            and fi.base_name.startswith(".")
            and fi.base_name.endswith(TMP_SUFFIX)
        ]
        for p in stale:
            fs.delete_file(p)
        return len(stale)

    def delete(self, uri: str) -> None:
        fs, path = self.resolve(uri)
        fs.delete_file(path)

    def delete_dir_contents(self, uri: str) -> None:
        fs, path = self.resolve(uri)
        if fs.get_file_info(path).type == pafs.FileType.Directory or is_s3(uri):
            fs.delete_dir_contents(path, missing_dir_ok=True)

    def makedirs(self, uri: str) -> None:
        fs, path = self.resolve(uri)
        fs.create_dir(path, recursive=True)
