"""Storage against real servers on 127.0.0.1: moto's S3, Python's http.server, and a fault-injecting
HTTP proxy in front of moto that answers chosen requests with 503 SlowDown."""

from __future__ import annotations

import http.client
import io
import os
import pickle
import re
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.config import parse_config
from pipeline.storage import (
    ConditionFailed,
    FileTooLarge,
    ReadOnlyError,
    Storage,
    StorageUnavailable,
    is_remote,
    is_transient,
    join,
    local_path,
    scheme,
)

SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>fault-proxy</RequestId></Error>"
)
ACCESS_DENIED = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "content-length"}


class FaultProxy:
    """A forwarding HTTP proxy (a thread on 127.0.0.1) that answers the first `fail_first` requests,
    every `fail_every`-th request, all of them (`always`), or those for which `fail_if(method, path)`
    is true, with `status` and an S3 error body instead of forwarding. Counts what it saw and what it
    failed."""

    def __init__(
        self, upstream: str, fail_first=0, fail_every=0, always=False, status=503, body=SLOWDOWN, fail_if=None
    ):
        self.upstream = upstream.split("://", 1)[1]
        self.fail_first, self.fail_every, self.always = fail_first, fail_every, always
        self.fail_if = fail_if
        self.failures: list[tuple[str, str]] = []  # (method, path) of the requests it failed
        self.sent = SendCounter()  # response body bytes the client took, per path
        self.status, self.body = status, body
        self.seen = self.failed = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # (method, path, headers)
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)

    def _should_fail(self, method: str, path: str) -> bool:
        with self._lock:
            self.seen += 1
            n = self.seen
            fail = self.always or n <= self.fail_first or (self.fail_every and n % self.fail_every == 0)
            fail = fail or (self.fail_if is not None and self.fail_if(method, path))
            self.failed += bool(fail)
            if fail:
                self.failures.append((method, path))
            return bool(fail)

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 30

            def log_message(self, *args):
                pass

            def _any(self):
                assert "chunked" not in self.headers.get("Transfer-Encoding", "")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.requests.append((self.command, self.path, dict(self.headers.items())))
                if proxy._should_fail(self.command, self.path):
                    payload = b"" if self.command == "HEAD" else proxy.body
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
                conn.request(self.command, self.path, body=body if body else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    try:
                        for at in range(0, len(data), 1 << 16):
                            self.wfile.write(data[at : at + (1 << 16)])
                            proxy.sent.add(self.path, len(data[at : at + (1 << 16)]))
                    except (BrokenPipeError, ConnectionResetError):
                        self.close_connection = True  # the client hung up before the end
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _any

        return Handler


def fast(endpoint: str | None = None, **kw) -> Storage:
    """A Storage that backs off for milliseconds, not seconds."""
    return Storage(endpoint_url=endpoint, retry_backoff_s=0.01, retry_backoff_max_s=0.05, **kw)


def read_s3(client, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


# -- URIs and redaction -------------------------------------------------------------------------


def test_scheme_join_and_remote():
    assert [scheme(u) for u in ("/a/b", "rel/x", "file:///a", "s3a://b/k", "gcs://b/k", "abfs://c/p")] == [
        "file",
        "file",
        "file",
        "s3",
        "gs",
        "az",
    ]
    assert is_remote("https://h/x") and not is_remote("file:///x")
    assert join("s3://b/corpus", "../audio/x.wav") == "s3://b/audio/x.wav"
    assert join("s3://b/corpus/", "./a/x.wav") == "s3://b/corpus/a/x.wav"
    assert join("file:///data/c", "x.wav") == "file:///data/c/x.wav"
    assert join("/data/c", "../x.wav") == "/data/x.wav"
    assert join("s3://b/c", "https://h/x.wav") == "https://h/x.wav"


def test_file_uris_name_local_paths_as_rfc_8089_writes_them(tmp_path):
    """`file:` URIs as pathlib's `as_uri()` writes them: percent-encoded (`My%20Clips`), `file://localhost/`,
    the scheme in any case. They were read with the `%20` as part of the name ("no such file"), and
    `file://localhost/x` as the relative path `localhost/x`."""
    folder = tmp_path / "My Clips" / "50% off"
    folder.mkdir(parents=True)
    (folder / "a b.wav").write_bytes(b"RIFF-not-really")
    uri = (folder / "a b.wav").as_uri()
    assert "%20" in uri and "%25" in uri  # as Python writes it
    s = Storage()
    for form in (uri, uri.replace("file:///", "file://localhost/"), "FILE" + uri[4:]):
        assert local_path(form) == str(folder / "a b.wav")
        assert s.read_bytes(form) == b"RIFF-not-really" and s.exists(form)
    # plain paths keep a `%` as part of the name; a file URI's listing reads back as what it lists
    assert local_path(str(folder / "x%20y.wav")) == str(folder / "x%20y.wav")
    listed = s.list_files(folder.as_uri(), ".wav")
    assert listed == [uri] and s.read_bytes(listed[0]) == b"RIFF-not-really"
    assert local_path("file://rel/x.jsonl") == "rel/x.jsonl"  # no host: the relative path it always was
    cfg = parse_config(
        {"input": {"manifest": folder.as_uri()}, "output": {"path": (tmp_path / "o p").as_uri()}}
    )
    assert (cfg.input.manifest, cfg.output.path) == (str(folder), str(tmp_path / "o p"))


def test_hub_errors_are_transient_by_their_http_status():
    """huggingface_hub (hf://) raises errors that hold their HTTP response (as Azure's SDK does); a 429 or a
    503 there was taken for permanent (neither aiohttp's nor botocore's shape), so a Hub rate limit
    failed the row or the manifest read at once. Built as the library builds them, from a response."""
    httpx = pytest.importorskip("httpx2", reason="huggingface_hub's HTTP client")
    from huggingface_hub.errors import HfHubHTTPError

    request = httpx.Request("GET", "https://huggingface.co/datasets/o/n/resolve/main/a.wav")
    for status, transient in ((429, True), (503, True), (520, True), (501, False), (403, False)):
        error = HfHubHTTPError(f"{status} error", response=httpx.Response(status, request=request))
        assert is_transient(error) is transient, status
        wrapped = OSError("read failed")
        wrapped.__cause__ = error
        assert is_transient(wrapped) is transient, status


def test_job_config_redacted():
    cfg = parse_config(
        {
            "input": {
                "manifest": "https://acct.blob.core.windows.net/c/m.jsonl?sv=2022&sig=SASsecret",
                "audio_root": "https://alice:pw123@files.example/audio",
            },
            "output": {"path": "s3://bkt/out?X-Amz-Security-Token=STStoken"},
            "storage": {"endpoint_url": "http://minio:topsecret@127.0.0.1:9000"},
        }
    )
    text = repr(cfg.redacted())
    for secret in ("SASsecret", "pw123", "alice", "STStoken", "topsecret"):
        assert secret not in text
    red = cfg.redacted()
    assert red["storage"]["endpoint_url"] == "http://***@127.0.0.1:9000"
    assert red["input"]["manifest"].startswith("https://acct.blob.core.windows.net/c/m.jsonl?sv=2022&sig=")
    assert cfg.storage.endpoint_url == "http://minio:topsecret@127.0.0.1:9000"  # the live config keeps it


# -- local ----------------------------------------------------------------------------------------


def test_local_files(tmp_path):
    s = Storage()
    for rel in ("a/1.parquet", "a/b/2.parquet", "a/_hidden/3.parquet", "a/.x.parquet", "a/b/n.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(rel.encode())
    root = str(tmp_path / "a")
    assert s.list_files(root, ".parquet") == [f"{root}/1.parquet", f"{root}/b/2.parquet"]
    assert s.list_files("file://" + root, ".txt") == [f"file://{root}/b/n.txt"]
    assert s.glob(f"{root}/**/*.parquet") == sorted(
        [f"{root}/1.parquet", f"{root}/b/2.parquet", f"{root}/_hidden/3.parquet", f"{root}/.x.parquet"]
    )
    assert s.read_bytes(f"{root}/b/n.txt") == b"a/b/n.txt"
    with pytest.raises(IsADirectoryError, match=root):
        s.read_bytes(root)
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        s.read_bytes(f"{root}/nope.bin")
    assert s.is_dir(root) and not s.is_dir(f"{root}/1.parquet")
    assert s.info(f"{root}/b/n.txt")["size"] == len(b"a/b/n.txt")

    s.write_bytes_atomic(f"{root}/new/x.bin", b"xyz")
    s.move(f"{root}/new/x.bin", f"{root}/moved/y.bin")
    assert not s.exists(f"{root}/new/x.bin") and (tmp_path / "a/moved/y.bin").read_bytes() == b"xyz"
    old, fresh = tmp_path / "a/b/.2.parquet.0123.inprogress", tmp_path / "a/.3.parquet.4567.inprogress"
    old.write_bytes(b"partial")
    fresh.write_bytes(b"being written")
    os.utime(old, (time.time() - 120, time.time() - 120))
    assert s.remove_stale_temp_files(root, min_age_s=60) == 1  # a writer may still own the fresh one
    assert not old.exists() and fresh.exists()
    assert s.remove_stale_temp_files(root) == 1 and not fresh.exists()
    with s.open_input(f"{root}/b/n.txt") as f:
        f.seek(2)
        assert f.read() == b"b/n.txt"


def test_local_write_if_absent_has_one_winner(tmp_path):
    s = Storage()
    target = str(tmp_path / "lease" / "owner")
    with ThreadPoolExecutor(8) as ex:
        won = list(ex.map(lambda i: s.write_bytes_if_absent(target, f"w{i}".encode()), range(16)))
    assert won.count(True) == 1
    assert (tmp_path / "lease" / "owner").read_bytes() == f"w{won.index(True)}".encode()
    assert os.listdir(tmp_path / "lease") == ["owner"]  # no temp files left


# -- http -----------------------------------------------------------------------------------------


class RangeHandler(SimpleHTTPRequestHandler):
    """http.server's file handler plus single `Range: bytes=a-b` requests (as real servers do)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = self.translate_path(self.path)
        if not m or not os.path.isfile(path):
            return super().do_GET()
        data = open(path, "rb").read()
        start, end = int(m[1]), min(int(m[2] or len(data) - 1), len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        self.wfile.write(data[start : end + 1])


class SendCounter:
    """What a server sent: per request path, the bytes that went into the socket before the client
    stopped reading (a client that drops the connection cuts the count short)."""

    def __init__(self) -> None:
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()

    def add(self, path: str, n: int) -> None:
        with self.lock:
            self.sent[path] = self.sent.get(path, 0) + n


def counting_handler(counter: SendCounter, directory: str, length: bool = True):
    """http.server serving `directory` in 64 KiB writes counted by `counter`; `length=False`: no
    Content-Length (HTTP/1.0, the body ends when the connection closes)."""

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kw):
            super().__init__(*args, directory=directory, **kw)

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = self.translate_path(self.path)
            if not os.path.isfile(path):
                return self.send_error(404)
            size = os.path.getsize(path)
            self.send_response(200)
            if length:
                self.send_header("Content-Length", str(size))
            self.end_headers()
            counter.add(self.path, 0)
            with open(path, "rb") as f:
                try:
                    while chunk := f.read(1 << 16):
                        self.wfile.write(chunk)
                        counter.add(self.path, len(chunk))
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up: what it refused is not counted

    return Handler


@pytest.fixture
def http_dir(tmp_path):
    """http.server serving `tmp_path` on 127.0.0.1; yields (folder, base URL)."""
    handler = partial(RangeHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def test_http_read_only(http_dir):
    folder, base = http_dir
    (folder / "clip.bin").write_bytes(bytes(range(256)) * 40)
    s = Storage()
    assert s.read_bytes(f"{base}/clip.bin") == bytes(range(256)) * 40
    with s.open_input(f"{base}/clip.bin") as f:
        f.seek(10_000)
        assert f.read(3) == bytes([10_000 % 256, 10_001 % 256, 10_002 % 256])
    with pytest.raises(FileNotFoundError, match=f"{base}/missing.wav"):
        s.read_bytes(f"{base}/missing.wav")
    with pytest.raises(ReadOnlyError, match=r"http\(s\) is read-only: .*out\.bin"):
        s.write_bytes_atomic(f"{base}/out.bin", b"x")
    assert not (folder / "out.bin").exists()
    assert s.retries == {}


def test_http_503_is_retried(http_dir):
    folder, base = http_dir
    (folder / "a.txt").write_bytes(b"served")
    with FaultProxy(base, fail_first=2, body=b"busy") as proxy:
        s = fast()
        assert s.read_bytes(f"{proxy.url}/a.txt") == b"served"
    assert proxy.failed == 2 and s.retries == {"read": 2}


@pytest.mark.parametrize("uri,module,extra", [("gs://b/k", "gcsfs", "gcs"), ("az://c/k", "adlfs", "azure")])
def test_missing_backend_names_the_extra(monkeypatch, uri, module, extra):
    # None in sys.modules is how Python marks a module as not importable: the back end is missing here
    # whether or not this machine has it installed
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(
        ImportError, match=rf"{module} package: pip install 'emotion2vec-pipeline\[{extra}\]'"
    ):
        Storage().read_bytes(uri)


# -- size limits: refused before the download -----------------------------------------------------

BIG = 48 << 20  # far more than loopback socket buffers hold, so an unread body shows in the count
LIMIT = 1 << 20


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no-length"])
def test_http_file_over_the_limit_is_refused_unread(tmp_path, length):
    (tmp_path / "big.wav").write_bytes(b"\0" * BIG)
    (tmp_path / "small.wav").write_bytes(b"s" * 1000)
    counter = SendCounter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), counting_handler(counter, str(tmp_path), length))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        s = Storage()
        assert s.read_bytes(f"{base}/small.wav", max_bytes=LIMIT) == b"s" * 1000
        with pytest.raises(FileTooLarge) as e:
            s.read_bytes(f"{base}/big.wav?sig=SECRETSIG", max_bytes=LIMIT)
    finally:
        server.shutdown()
        server.server_close()
    if length:  # refused from the header: size and limit named
        assert "48.0 MB (50331648 bytes), over the limit of 1 MB" in str(e.value)
    else:  # no header: refused once past the limit
        assert "more than 1 MB (the server sent no length)" in str(e.value)
    assert "SECRETSIG" not in str(e.value) and "big.wav" in str(e.value)
    assert counter.sent["/big.wav?sig=SECRETSIG"] < BIG // 2  # the body was not downloaded


def test_local_file_over_the_limit_is_refused(tmp_path):
    (tmp_path / "big.wav").write_bytes(b"\0" * (LIMIT + 1))
    with pytest.raises(FileTooLarge, match=r"over the limit of 1 MB"):
        Storage().read_bytes(str(tmp_path / "big.wav"), max_bytes=LIMIT)
    assert Storage().read_bytes(str(tmp_path / "big.wav"), max_bytes=LIMIT + 1)[:1] == b"\0"


@pytest.mark.s3
def test_s3_object_over_the_limit_is_refused_unread(s3_server, s3_bucket):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="big.wav", Body=b"\0" * BIG)
    client.put_object(Bucket=bucket, Key="small.wav", Body=b"ok")
    with FaultProxy(s3_server) as proxy:  # fails nothing: logs the requests and what the client took
        s = fast(proxy.url)
        with pytest.raises(FileTooLarge, match=rf"s3://{bucket}/big.wav: 48.0 MB .*over the limit of 1 MB"):
            s.read_bytes(f"s3://{bucket}/big.wav", max_bytes=LIMIT)
        assert s.read_bytes(f"s3://{bucket}/small.wav", max_bytes=LIMIT) == b"ok"
        with pytest.raises(FileNotFoundError, match=rf"s3://{bucket}/none.wav"):
            s.read_bytes(f"s3://{bucket}/none.wav", max_bytes=LIMIT)
    big = [(method, path) for method, path, _ in proxy.requests if path.split("?")[0].endswith("/big.wav")]
    assert [m for m, _ in big] == ["GET"]  # one request, refused from its ContentLength
    assert proxy.sent.sent.get(big[0][1], 0) < BIG // 2  # the body was not downloaded
    assert s.retries == {}


# -- S3 (moto) ------------------------------------------------------------------------------------


@pytest.mark.s3
def test_s3_read_write_list_glob_move(s3_server, s3_bucket):
    client, bucket = s3_bucket
    for key in ("d/1.parquet", "d/e/2.parquet", "d/_tmp/3.parquet", "d/.h.parquet", "d/e/n.txt"):
        client.put_object(Bucket=bucket, Key=key, Body=key.encode())
    s = Storage(endpoint_url=s3_server)
    root = f"s3://{bucket}/d"
    assert s.list_files(root, ".parquet") == [f"{root}/1.parquet", f"{root}/e/2.parquet"]
    assert s.list_files(f"s3a://{bucket}/d/e") == [
        f"s3a://{bucket}/d/e/2.parquet",
        f"s3a://{bucket}/d/e/n.txt",
    ]
    assert s.glob(f"{root}/**/*.txt") == [f"{root}/e/n.txt"]
    assert s.glob(f"{root}/*.parquet") == [f"{root}/.h.parquet", f"{root}/1.parquet"]
    assert s.read_bytes(f"{root}/e/n.txt") == b"d/e/n.txt"
    with pytest.raises(FileNotFoundError, match=f"s3://{bucket}/d/none.wav"):
        s.read_bytes(f"{root}/none.wav")
    with pytest.raises(IsADirectoryError, match=f"s3://{bucket}/d/e"):
        s.read_bytes(f"{root}/e")
    assert s.is_dir(f"{root}/e") and s.exists(f"{root}/e") and not s.exists(f"{root}/zz")

    s.write_bytes_atomic(f"{root}/w/out.bin", b"payload")
    assert read_s3(client, bucket, "d/w/out.bin") == b"payload"
    info = s.info(f"{root}/w/out.bin")
    assert (info["type"], info["size"]) == ("file", 7)
    assert info["etag"] == client.head_object(Bucket=bucket, Key="d/w/out.bin")["ETag"].strip('"')
    assert s.info(f"{root}/e")["type"] == "directory"

    s.move(f"{root}/w/out.bin", f"{root}/w2/out.bin")
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="d/w")["Contents"]}
    assert keys == {"d/w2/out.bin"}
    s.delete(f"{root}/w2/out.bin")
    assert not s.exists(f"{root}/w2/out.bin")
    with s.open_input(f"{root}/e/n.txt") as f:
        f.seek(4)
        assert f.read() == b"n.txt"
    assert s.retries == {}


@pytest.mark.s3
def test_s3_write_if_absent_is_a_conditional_put(s3_server, s3_bucket):
    client, bucket = s3_bucket
    uri = f"s3://{bucket}/leases/part-0"
    with FaultProxy(s3_server) as proxy:  # no faults: it only records what goes over the wire
        s = Storage(endpoint_url=proxy.url)
        assert s.write_bytes_if_absent(uri, b"first") is True
        assert s.write_bytes_if_absent(uri, b"second") is False
    # one PUT each, carrying the condition, and no existence check before it
    assert [(m, h.get("If-None-Match")) for m, _, h in proxy.requests] == [("PUT", "*"), ("PUT", "*")]
    assert read_s3(client, bucket, "leases/part-0") == b"first"
    with ThreadPoolExecutor(6) as ex:
        won = list(ex.map(lambda i: s.write_bytes_if_absent(f"{uri}-race", f"w{i}".encode()), range(12)))
    assert won.count(True) == 1
    assert read_s3(client, bucket, "leases/part-0-race") == f"w{won.index(True)}".encode()


@pytest.mark.s3
@pytest.mark.parametrize("profile", [None, "e2v-test"])
def test_s3_resolve_reads_parquet(s3_server, s3_bucket, tmp_path, monkeypatch, profile):
    client, bucket = s3_bucket
    creds = tmp_path / "credentials"
    creds.write_text("[e2v-test]\naws_access_key_id = fromprofile\naws_secret_access_key = fromprofile\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    table = pa.table({"id": ["a", "b", "c"], "x": [1.5, 2.5, 3.5]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    client.put_object(Bucket=bucket, Key="t/part.parquet", Body=buf.getvalue())
    s = Storage(endpoint_url=s3_server, profile=profile)
    fs, path = s.resolve(f"s3://{bucket}/t/part.parquet")
    assert isinstance(fs, pafs.S3FileSystem if profile is None else pafs.PyFileSystem)
    assert pq.read_table(path, filesystem=fs).equals(table)
    with s.open_input(f"s3://{bucket}/t/part.parquet") as f:
        assert pq.read_table(f).equals(table)


@pytest.mark.s3
def test_storage_pickles_after_use(s3_server, s3_bucket):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="p.txt", Body=b"pickled")
    s = Storage(endpoint_url=s3_server, max_retries=2)
    assert s.read_bytes(f"s3://{bucket}/p.txt") == b"pickled"
    s.retries["read"] = 4
    copy = pickle.loads(pickle.dumps(s))
    assert copy.read_bytes(f"s3://{bucket}/p.txt") == b"pickled"
    assert copy.max_retries == 2 and copy.retries == {}  # each process counts its own retries


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.s3
def test_first_requests_503_are_retried_and_counted(s3_server, s3_bucket):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="in.bin", Body=b"original")
    with FaultProxy(s3_server, fail_first=3) as proxy:
        s = fast(proxy.url)
        assert s.read_bytes(f"s3://{bucket}/in.bin") == b"original"
        s.write_bytes_atomic(f"s3://{bucket}/out.bin", b"written")
    assert proxy.failed == 3
    assert s.retries == {"read": 3}
    assert read_s3(client, bucket, "out.bin") == b"written"


@pytest.mark.s3
def test_every_other_request_503(s3_server, s3_bucket):
    client, bucket = s3_bucket
    with FaultProxy(s3_server, fail_every=2) as proxy:
        s = fast(proxy.url)
        for i in range(5):
            s.write_bytes_atomic(f"s3://{bucket}/f/{i}.bin", f"v{i}".encode())
        got = [s.read_bytes(f"s3://{bucket}/f/{i}.bin") for i in range(5)]
        listed = s.list_files(f"s3://{bucket}/f", ".bin")
        assert s.write_bytes_if_absent(f"s3://{bucket}/f/lock", b"me") is True
    assert got == [f"v{i}".encode() for i in range(5)]
    assert listed == [f"s3://{bucket}/f/{i}.bin" for i in range(5)]
    assert proxy.failed >= 5 and sum(s.retries.values()) == proxy.failed
    assert set(s.retries) <= {"read", "write", "list"} and s.retries["write"] >= 1
    assert read_s3(client, bucket, "f/lock") == b"me"


@pytest.mark.s3
def test_persistent_503_fails_after_bounded_attempts(s3_server, s3_bucket):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="in.bin", Body=b"x")
    with FaultProxy(s3_server, always=True) as proxy:
        s = fast(proxy.url, max_retries=3)
        with pytest.raises(OSError, match=rf"read s3://{bucket}/in.bin: still failing after 4 attempts"):
            s.read_bytes(f"s3://{bucket}/in.bin")
        reads = proxy.seen
        with pytest.raises(OSError, match="still failing after 4 attempts"):
            s.write_bytes_atomic(f"s3://{bucket}/out.bin", b"y")
    # one request per attempt: neither botocore nor s3fs retries underneath ours
    assert reads == 4 and proxy.seen == 8
    assert s.retries == {"read": 3, "write": 3}


@pytest.mark.s3
def test_parquet_reads_are_retried(s3_server, s3_bucket):
    """A Parquet manifest is read in ranges through `open_input`: a 503 on any of them (footer,
    column chunks) is retried like every other call."""
    client, bucket = s3_bucket
    table = pa.table({"id": [f"r{i}" for i in range(3000)], "path": [f"a/{i}.wav" for i in range(3000)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=500)
    client.put_object(Bucket=bucket, Key="m.parquet", Body=sink.getvalue())
    with FaultProxy(s3_server, fail_every=2) as proxy:
        s = fast(proxy.url)
        with s.open_input(f"s3://{bucket}/m.parquet") as f:
            pf = pq.ParquetFile(f)
            got = pa.Table.from_batches(list(pf.iter_batches(batch_size=700)))
    assert got.equals(table)
    assert proxy.failed >= 1 and s.retries.get("read", 0) >= 1  # a range read failed and was retried


@pytest.mark.s3
def test_storage_that_stays_down_is_unavailable_not_missing(s3_server, s3_bucket):
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="m.parquet", Body=b"x")
    with FaultProxy(s3_server, always=True) as proxy:
        s = fast(proxy.url, max_retries=1)
        with pytest.raises(StorageUnavailable, match="still failing after 2 attempts"):
            s.read_bytes(f"s3://{bucket}/m.parquet")
    assert proxy.seen == 2


@pytest.mark.s3
def test_permanent_errors_are_not_retried(s3_server, s3_bucket):
    _, bucket = s3_bucket
    with FaultProxy(s3_server, always=True, status=403, body=ACCESS_DENIED) as proxy:
        s = fast(proxy.url)
        with pytest.raises(PermissionError):
            s.read_bytes(f"s3://{bucket}/in.bin")
    assert proxy.seen == 1 and s.retries == {}


def test_refused_connection_before_any_contact_is_not_retried():
    from .conftest import free_port

    s = fast(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(OSError, match=r"read s3://bkt/x: EndpointConnectionError") as e:
        s.read_bytes("s3://bkt/x")
    assert "still failing" not in str(e.value) and s.retries == {}


@pytest.mark.s3
def test_s3_replace_if_version_is_an_if_match_put(s3_server, s3_bucket):
    client, bucket = s3_bucket
    uri = f"s3://{bucket}/leases/_lease.json"
    with FaultProxy(s3_server) as proxy:  # no faults: it only records what goes over the wire
        s = Storage(endpoint_url=proxy.url)
        assert s.write_bytes_if_absent(uri, b"v1")
        v1 = s.version(uri)
        v2 = s.replace_if_version(uri, b"v2", v1)
        assert v2 != v1 and v2 == client.head_object(Bucket=bucket, Key="leases/_lease.json")["ETag"].strip(
            '"'
        )
        put = [h for m, _, h in proxy.requests if m == "PUT"][-1]
        assert put.get("If-Match") == f'"{v1}"'
        client.put_object(Bucket=bucket, Key="leases/_lease.json", Body=b"someone else")
        with pytest.raises(ConditionFailed, match="rewritten by someone else"):
            s.replace_if_version(uri, b"v3", v2)  # decided by the store: no read before the PUT
        assert [m for m, _, _ in proxy.requests][-1] == "PUT"
        assert read_s3(client, bucket, "leases/_lease.json") == b"someone else"
        client.delete_object(Bucket=bucket, Key="leases/_lease.json")
        with pytest.raises(ConditionFailed, match="gone"):
            s.replace_if_version(uri, b"v4", v2)
        assert s.exists(uri) is False


def test_local_replace_if_version_compares_the_content(tmp_path):
    s, uri = Storage(), str(tmp_path / "f.json")
    assert s.write_bytes_if_absent(uri, b"v1")
    v2 = s.replace_if_version(uri, b"v2", s.version(uri))
    assert v2 == s.version(uri) and (tmp_path / "f.json").read_bytes() == b"v2"
    (tmp_path / "f.json").write_bytes(b"someone else")
    with pytest.raises(ConditionFailed):
        s.replace_if_version(uri, b"v3", v2)
    assert (tmp_path / "f.json").read_bytes() == b"someone else"


@pytest.mark.s3
def test_a_deadline_stops_retries_before_max_retries(s3_server, s3_bucket):
    """Inside `Storage.deadline`, a call starts no attempt after the deadline, however many retries
    `max_retries` would allow (the lease's renewals rely on it)."""
    client, bucket = s3_bucket
    with FaultProxy(s3_server, always=True) as proxy:
        s = Storage(endpoint_url=proxy.url, max_retries=1000, retry_backoff_s=0.1, retry_backoff_max_s=0.1)
        with Storage.deadline(time.time() + 1.0), pytest.raises(TimeoutError, match="deadline passed"):
            s.write_bytes_atomic(f"s3://{bucket}/out.bin", b"y")
        assert 1 <= proxy.seen < 100  # at most ~20 backoffs of 50-100 ms fit in a second
        with pytest.raises(OSError, match="still failing after 4 attempts"):
            Storage(endpoint_url=proxy.url, max_retries=3, retry_backoff_s=0.01).read_bytes(
                f"s3://{bucket}/x"
            )


@pytest.mark.s3
def test_s3_folder_markers_are_not_files(s3_server, s3_bucket):
    """A folder made in the S3 console (or by tools that mimic one) is a zero-byte key ending in `/`:
    it is not a file, so listings and globs leave it out and such a folder of audio reads as one."""
    from pipeline.config import InputConfig
    from pipeline.manifest.sources import discover

    client, bucket = s3_bucket
    for key in ("clips/", "clips/sub/", "clips/a.wav", "clips/sub/b.wav"):
        client.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("/") else b"RIFF")
    s = Storage(endpoint_url=s3_server)
    root = f"s3://{bucket}/clips"
    assert s.list_files(root) == [f"{root}/a.wav", f"{root}/sub/b.wav"]
    assert s.glob(f"{root}/**") == [f"{root}/a.wav", f"{root}/sub/b.wav"]
    [source] = discover(InputConfig(manifest=root + "/"), s)
    assert (source.format, source.audio.column("id").to_pylist()) == ("audio", ["a", "sub/b"])


@pytest.mark.s3
def test_hadoop_folder_markers_are_not_files(s3_server, s3_bucket):
    """Hadoop's S3 connectors and EMRFS (Spark on EMR) mark each folder they create with a zero-byte
    key `<folder>_$folder$` beside it: not a file either, so a folder of audio or of Parquet shards
    written that way reads as its files alone, not as a manifest of unknown format."""
    from pipeline.config import InputConfig
    from pipeline.manifest.sources import discover

    client, bucket = s3_bucket
    for key in ("clips_$folder$", "clips/sub_$folder$", "clips/a.wav", "clips/sub/b.wav"):
        client.put_object(Bucket=bucket, Key=key, Body=b"" if key.endswith("$") else b"RIFF")
    s = Storage(endpoint_url=s3_server)
    root = f"s3://{bucket}/clips"
    assert s.list_files(root) == [f"{root}/a.wav", f"{root}/sub/b.wav"]
    assert s.glob(f"{root}/*") == [f"{root}/a.wav"]
    [source] = discover(InputConfig(manifest=root), s)
    assert (source.format, source.audio.column("id").to_pylist()) == ("audio", ["a", "sub/b"])


def test_http_503_on_a_lookup_is_retried_not_missing(http_dir):
    """fsspec's http info() (a HEAD, then a GET) turns any failure into FileNotFoundError: a server
    answering 503 to both is busy, not missing a file, so the lookup is retried like a read; a 404
    stays missing, at once."""
    folder, base = http_dir
    (folder / "manifest.jsonl").write_bytes(b'{"id": "a", "path": "a.wav"}\n')
    with FaultProxy(base, fail_first=2, body=b"busy") as proxy:
        s = fast()
        assert s.exists(f"{proxy.url}/manifest.jsonl")
        assert s.info(f"{proxy.url}/manifest.jsonl")["size"] == 29
    assert proxy.failed == 2 and s.retries == {"info": 1}
    with FaultProxy(base) as proxy:
        s = fast()
        assert not s.exists(f"{proxy.url}/missing.jsonl")
    assert s.retries == {}


@pytest.mark.s3
def test_s3_manifest_readable_without_list_permission(s3_server, s3_bucket):
    """A role that may GET objects but not list the bucket (s3:GetObject on a prefix, no
    s3:ListBucket: S3 answers a listing 403 AccessDenied) reads a manifest named by its key: telling
    a file from a folder must not need a listing when the key itself answers."""
    from pipeline.config import InputConfig
    from pipeline.manifest.sources import discover

    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="m/manifest.jsonl", Body=b'{"id": "a", "path": "a.wav"}\n')

    def listing(method: str, path: str) -> bool:
        return method == "GET" and "list-type=" in path

    with FaultProxy(s3_server, fail_if=listing, status=403, body=ACCESS_DENIED) as proxy:
        s = fast(proxy.url)
        uri = f"s3://{bucket}/m/manifest.jsonl"
        assert not s.is_dir(uri)
        [source] = discover(InputConfig(manifest=uri), s)
        assert (source.uri, source.format, source.root) == (uri, "jsonl", f"s3://{bucket}/m")
        with pytest.raises(PermissionError):  # a folder cannot be told without a listing: still refused
            s.is_dir(f"s3://{bucket}/m")
    assert proxy.failed > 0 and s.retries == {}


def test_relative_paths_next_to_a_signed_manifest_url_resolve_in_its_folder(http_dir):
    """A manifest URL whose query holds `/` unencoded (RFC 3986 allows it: a credential scope
    `AKIA/20250101/us-east-1/s3/aws4_request`, a `?path=/x`): its relative paths resolve in the
    URL's folder, not inside its query (where the server, ignoring the query, would answer with the
    manifest itself)."""
    from pipeline.config import InputConfig
    from pipeline.manifest.sources import discover

    folder, base = http_dir
    (folder / "c").mkdir()
    (folder / "c" / "m.jsonl").write_bytes(b'{"id": "a", "path": "a.wav"}\n')
    url = f"{base}/c/m.jsonl?X-Amz-Credential=AKIA/20250101/us-east-1/s3/aws4_request&X-Amz-Signature=0f"
    [source] = discover(InputConfig(manifest=url), fast())
    assert (source.uri, source.format) == (url, "jsonl")
    assert join(source.root, "a.wav") == f"{base}/c/a.wav"


def test_local_listing_follows_symlinked_folders(tmp_path):
    """A corpus folder assembled from symlinks (`ln -s /data/callhome/eng eng`) lists the files
    under a linked folder, never the link itself as a file; a link back up the tree (a cycle) is
    listed once and ends."""
    from pipeline.config import InputConfig
    from pipeline.manifest.sources import discover

    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "sub" / "a.wav").write_bytes(b"RIFF")
    (tmp_path / "real" / "b.wav").write_bytes(b"RIFF")
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "c.wav").write_bytes(b"RIFF")
    (corpus / "linked").symlink_to(tmp_path / "real" / "sub", target_is_directory=True)
    (corpus / "b.wav").symlink_to(tmp_path / "real" / "b.wav")
    (corpus / "loop").symlink_to(corpus, target_is_directory=True)
    s = Storage()
    assert s.list_files(str(corpus)) == [str(corpus / n) for n in ("b.wav", "c.wav", "linked/a.wav")]
    assert s.list_files(f"file://{corpus}", ".wav")[-1] == f"file://{corpus}/linked/a.wav"
    [source] = discover(InputConfig(manifest=str(corpus)), s)
    assert source.audio["id"].to_pylist() == ["b", "c", "linked/a"]
    # a glob reads the same tree: `**` and a `*` folder cross the link, a depth it does not name is not read
    assert s.glob(f"{corpus}/**/*.wav") == [str(corpus / n) for n in ("b.wav", "c.wav", "linked/a.wav")]
    assert s.glob(f"{corpus}/*/a.wav") == [str(corpus / "linked" / "a.wav")]
    assert s.glob(f"{corpus}/*.wav") == [str(corpus / n) for n in ("b.wav", "c.wav")]


@pytest.mark.parametrize("status", [507, 520, 522, 524])
def test_http_5xx_beyond_503_is_retried(http_dir, status):
    """The docs promise HTTP 5xx retried: a CDN in front of a corpus answers 520-524 (origin
    unreachable, timed out) for a while; that is the server's trouble, not a missing file."""
    folder, base = http_dir
    (folder / "a.txt").write_bytes(b"served")
    with FaultProxy(base, fail_first=2, status=status, body=b"origin timed out") as proxy:
        s = fast()
        assert s.read_bytes(f"{proxy.url}/a.txt") == b"served"
        assert s.read_bytes(f"{proxy.url}/a.txt", max_bytes=100) == b"served"
    assert proxy.failed == 2 and s.retries == {"read": 2}


def test_http_501_and_505_are_not_retried(http_dir):
    folder, base = http_dir
    (folder / "a.txt").write_bytes(b"served")
    for status in (501, 505):
        with FaultProxy(base, always=True, status=status, body=b"no") as proxy:
            s = fast()
            with pytest.raises(OSError, match=f"{status}"):
                s.read_bytes(f"{proxy.url}/a.txt")
        assert proxy.failed == 1 and s.retries == {}


def test_a_signed_manifest_url_refused_by_its_server_says_so(tmp_path):
    """An expired (or wrongly signed) presigned manifest URL answers 403 to the HEAD and the GET:
    the run ends naming the URL and the 403, not 'no files match' as if `?` had started a glob."""
    from pipeline.config import InputConfig
    from pipeline.manifest import ManifestError
    from pipeline.manifest.sources import discover

    class Expired(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            body = b"" if self.command == "HEAD" else b"<Error><Code>AccessDenied</Code></Error>"
            self.send_response(404 if self.path.startswith("/gone") else 403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Expired)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        url = f"{base}/m.jsonl?X-Amz-Expires=3600&X-Amz-Signature=0f1e2d"
        with pytest.raises(ManifestError, match="403") as refused:
            discover(InputConfig(manifest=url), fast())
        assert "no files match" not in str(refused.value) and f"{base}/m.jsonl?" in str(refused.value)
        with pytest.raises(ManifestError, match="no files match"):  # a 404 is still a missing file
            discover(InputConfig(manifest=f"{base}/gone.jsonl?X-Amz-Signature=0f1e2d"), fast())
    finally:
        server.shutdown()
        server.server_close()


class ApacheIndex(BaseHTTPRequestHandler):
    """A folder served as Apache httpd's autoindex serves it: `/d` redirects to `/d/`, whose page links
    the column-sort views (`?C=N;O=D`), the parent folder, the files and the subfolders."""

    files = {"/corpus/a.wav": b"RIFF", "/corpus/spk1/b.wav": b"RIFF"}

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        names = sorted(
            {
                f[len(path) :].split("/")[0] + ("/" if "/" in f[len(path) :] else "")
                for f in self.files
                if f.startswith(path)
            }
        )
        if path in self.files:
            body, kind = self.files[path], "audio/wav"
        elif path.endswith("/") and names:
            sort = "".join(f'<th><a href="?C={c};O=A">{c}</a></th>' for c in "NMSD")
            rows = "".join(f'<tr><td><a href="{n}">{n}</a></td></tr>' for n in names)
            parent = path.rstrip("/").rsplit("/", 1)[0] + "/"
            body = f'<html><body><table><tr>{sort}</tr><tr><td><a href="{parent}">Parent Directory</a></td></tr>{rows}</table></body></html>'.encode()
            kind = "text/html;charset=UTF-8"
        elif names:
            self.send_response(301)
            self.send_header("Location", path + "/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        else:
            return self.send_error(404)
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_GET


def test_an_apache_folder_index_lists_its_files_not_its_sort_links():
    """Apache's autoindex pages link their column-sort views (`?C=N;O=D`): pages, not files. A folder
    of audio served so reads as its files (was: refused as mixing manifests `?C=N;O=D` and audio)."""
    from pipeline.config import InputConfig
    from pipeline.manifest.sources import discover

    server = ThreadingHTTPServer(("127.0.0.1", 0), ApacheIndex)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        s = fast()
        assert s.list_files(f"{base}/corpus/") == [f"{base}/corpus/a.wav", f"{base}/corpus/spk1/b.wav"]
        assert s.glob(f"{base}/corpus/**") == [f"{base}/corpus/a.wav", f"{base}/corpus/spk1/b.wav"]
        [source] = discover(InputConfig(manifest=f"{base}/corpus/"), s)
        assert source.audio.to_pylist() == [
            {"id": "a", "path": f"{base}/corpus/a.wav"},
            {"id": "spk1/b", "path": f"{base}/corpus/spk1/b.wav"},
        ]
    finally:
        server.shutdown()
        server.server_close()


def test_an_http_folder_of_audio_names_rows_as_the_same_folder_on_disk(http_dir):
    """A folder served over http(s) lists percent-encoded URLs (`spk%201/b.wav`); a row's id is the
    file's path relative to the folder (`spk 1/b`), as when the same folder is read from disk, so
    labels keyed by id match either way. The path stays the URL that is fetched."""
    from pipeline.config import InputConfig
    from pipeline.manifest.sources import discover

    folder, base = http_dir
    for rel in ("corpus/a.wav", "corpus/spk 1/b.wav", "corpus/ünï.flac", "corpus/h#1.wav", "corpus/50%.wav"):
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(b"RIFF")
    s = fast()
    [local] = discover(InputConfig(manifest=str(folder / "corpus")), s)
    [served] = discover(InputConfig(manifest=f"{base}/corpus/"), s)
    assert sorted(served.audio["id"].to_pylist()) == sorted(local.audio["id"].to_pylist())
    assert sorted(served.audio["id"].to_pylist()) == ["50%", "a", "h#1", "spk 1/b", "ünï"]
    assert f"{base}/corpus/spk%201/b.wav" in served.audio["path"].to_pylist()
    assert all(s.read_bytes(p) == b"RIFF" for p in served.audio["path"].to_pylist())


@pytest.mark.s3
def test_s3_scheme_in_capitals(s3_server, s3_bucket):
    """URI schemes are case-insensitive (RFC 3986) and `scheme()` says so: `S3://bucket/key` is the
    object `key` in `bucket` (was: a bucket named `S3:`, refused by botocore's bucket-name check)."""
    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="k/a.wav", Body=b"RIFF")
    s = Storage(endpoint_url=s3_server)
    assert s.exists(f"S3://{bucket}/k/a.wav") and s.read_bytes(f"S3://{bucket}/k/a.wav") == b"RIFF"
    assert s.list_files(f"S3://{bucket}/k") == [f"S3://{bucket}/k/a.wav"]
    assert s.read_bytes(f"S3A://{bucket}/k/a.wav", max_bytes=10) == b"RIFF"
