"""The redaction boundary on its own: URLs made the way users get them (boto3's presigner, an Azure
SAS query, a GCS signed URL, user info), the console wrapper and log records."""

from __future__ import annotations

import io
import logging
import sys
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import pyarrow as pa
import pytest
from botocore.config import Config

from pipeline import redact
from pipeline.errors import causes, find


@pytest.fixture
def presigned() -> tuple[str, list[str]]:
    """A SigV4 presigned GET URL with a session token, made by boto3 (no server needed) -> the URL
    and its secret values as they appear in it."""
    client = boto3.client(
        "s3",
        region_name="eu-west-1",
        aws_access_key_id="AKIAPRESIGNLEAK0001",
        aws_secret_access_key="presignSecretLeakCheck",
        aws_session_token="PresignSessionTokenLeak42",
        config=Config(signature_version="s3v4"),
    )
    url = client.generate_presigned_url("get_object", Params={"Bucket": "b", "Key": "a/x.wav"}, ExpiresIn=600)
    query = dict(parse_qsl(urlsplit(url).query))
    return url, [query["X-Amz-Signature"], "AKIAPRESIGNLEAK0001", "PresignSessionTokenLeak42"]


SAS = "https://acct.blob.core.windows.net/c/a.wav?sv=2022-11-02&ss=b&sp=r&se=2030-01-01T00%3A00%3A00Z&sig=SaSsig%2BLeak%2F9%3D"
GCS = (
    "https://storage.googleapis.com/b/a.wav?X-Goog-Algorithm=GOOG4-RSA-SHA256"
    "&X-Goog-Credential=svc%40proj.iam.gserviceaccount.com%2F20250101%2Fauto%2Fstorage%2Fgoog4_request"
    "&X-Goog-Date=20250101T000000Z&X-Goog-Expires=600&X-Goog-SignedHeaders=host&X-Goog-Signature=6f00dleak77"
)


def test_presigned_s3_url(presigned):
    url, secrets = presigned
    out = redact.redact(url)
    assert all(s in url for s in secrets)  # as boto3 made it
    for secret in secrets:
        assert secret not in out and quote(secret, safe="") not in out
    # what is not secret stays readable: where the object is, which algorithm, when it expires
    assert out.split("?")[0] == url.split("?")[0]
    assert "X-Amz-Algorithm=AWS4-HMAC-SHA256" in out and "X-Amz-Expires=600" in out


def test_azure_sas_and_gcs_signed_urls():
    out = redact.redact(SAS)
    assert "SaSsig" not in out and "sig=***" in out
    assert "sv=2022-11-02" in out and "sp=r" in out  # the SAS's other fields are not secrets
    out = redact.redact(GCS)
    assert "6f00dleak77" not in out and "svc%40proj" not in out and "X-Goog-Date=20250101T000000Z" in out


def test_userinfo_and_urls_inside_text(presigned):
    url, secrets = presigned
    assert redact.redact("http://alice:pw123@h:9000/x") == "http://***@h:9000/x"
    msg = f"fetch: ClientResponseError: 404, message='Not Found', url=URL('{url}') and {SAS}"
    out = redact.redact(msg)
    assert all(s not in out for s in secrets) and "SaSsig" not in out and out.startswith("fetch: Client")
    # a signed URL quoted (percent-encoded) inside another URL's query
    wrapped = "https://proxy/get?target=" + quote(GCS, safe="")
    assert "6f00dleak77" not in redact.redact(wrapped)
    for plain in ("s3://bucket/take@2.wav", "id=a path=/data/x.wav", "no url here"):
        assert redact.redact(plain) == plain


def test_redact_data_and_column():
    data = {"config": {"input": {"manifest": SAS}}, "list": ["http://u:pw@h/x", 3], "n": 1.5}
    out = redact.redact_data(data)
    assert "SaSsig" not in repr(out) and "pw" not in repr(out) and out["n"] == 1.5
    table = pa.table({"error": [None, f"fetch: FileNotFoundError: no such file: {GCS}"], "id": ["a", "b"]})
    red = redact.redact_column(table, "error")
    assert red["error"][0].as_py() is None and "6f00dleak77" not in red["error"][1].as_py()
    assert red["id"].to_pylist() == ["a", "b"] and red.schema == table.schema
    clean = pa.table({"error": ["decode: AudioError: x.wav: empty file"]})
    assert redact.redact_column(clean, "error") is clean  # nothing suspect: not copied


def test_console_redacts_prints_and_log_records(presigned):
    url, secrets = presigned
    out, err = io.StringIO(), io.StringIO()
    handler_stream = io.StringIO()  # a handler made before the boundary (as Ray's are)
    handler = logging.StreamHandler(handler_stream)
    log = logging.getLogger("e2v-test-redact")
    log.addHandler(handler)
    log.propagate = False
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        with redact.console():
            print(f"[emotion2vec] manifest {url}: 3 rows")
            sys.stderr.write("split " + url[:40])  # one line written in two pieces
            sys.stderr.write(url[40:] + "\n")
            log.warning("could not renew %s", url)
            try:
                raise OSError(f"read {SAS}: still failing")
            except OSError:
                log.exception("failed")
        assert (sys.stdout, sys.stderr) == (out, err)  # put back
    finally:
        sys.stdout, sys.stderr = old
        log.removeHandler(handler)
    text = out.getvalue() + err.getvalue() + handler_stream.getvalue()
    assert "3 rows" in text and "could not renew" in text and "still failing" in text
    for secret in [*secrets, "SaSsig"]:
        assert secret not in text
    assert not getattr(logging.getLogRecordFactory(), "redacting", False)  # put back


def test_one_chain_walk():
    class Remote(Exception):
        """Like Ray's RayTaskError: the remote exception in `.cause`, no __cause__."""

        def __init__(self, cause):
            super().__init__("wrapped")
            self.cause = cause

    try:
        try:
            raise ConnectionResetError("reset")
        except ConnectionResetError:
            raise ValueError("bad") from None  # context kept, suppressed in tracebacks
    except ValueError as e:
        inner = e
    outer = Remote(inner)
    assert [type(x).__name__ for x in causes(outer)] == ["Remote", "ValueError", "ConnectionResetError"]
    assert isinstance(find(outer, OSError), ConnectionResetError) and find(outer, KeyError) is None
    loop = ValueError("a")
    loop.__context__ = KeyError("b")
    loop.__context__.__context__ = loop
    assert len(list(causes(loop))) == 2


def test_userinfo_with_an_at_sign_in_the_password():
    """A password holding a raw `@` (clients split the user info at the host's `@`, the last one:
    urllib, yarl and so aiohttp fetch such a URL): all of it is secret, not only what precedes the first."""
    from urllib.parse import urlsplit

    url = "https://alice:p@ss@word@host.example:8443/a.wav"
    assert urlsplit(url).password == "p@ss@word"
    assert redact.redact(url) == "https://***@host.example:8443/a.wav"
    assert redact.redact(f"fetch: 403 url='{url}' and s3://bucket/take@2.wav") == (
        "fetch: 403 url='https://***@host.example:8443/a.wav' and s3://bucket/take@2.wav"
    )


def test_azure_container_before_the_account_is_not_user_info():
    """`abfs[s]://<container>@<account>.dfs.core.windows.net/<path>` (and wasb[s]) name a container
    before the `@`, not a user: the path column, default ids and messages keep it. Elsewhere the
    same shape (`https://<token>@host`) is still masked."""
    from pipeline.redact import redacted_name

    for url in (
        "abfss://corpus@myaccount.dfs.core.windows.net/clips/a.wav",
        "abfs://corpus@myaccount.dfs.core.windows.net/clips/a.wav",
        "wasbs://corpus@myaccount.blob.core.windows.net/clips/a.wav",
    ):
        assert redact.redact(url) == url and redacted_name(url) == url
        assert redact.redact(f"fetch: no such file: {url}") == f"fetch: no such file: {url}"
    assert redact.redact("xhttps://ghp_token@github.com/a") == "xhttps://***@github.com/a"
    assert redact.redact("see https://ghp_token@github.com/a") == "see https://***@github.com/a"
    sas = "abfss://corpus@myaccount.dfs.core.windows.net/a.wav?sv=2022&sig=S3cr3t"
    assert redact.redact(sas) == "abfss://corpus@myaccount.dfs.core.windows.net/a.wav?sv=2022&sig=***"


def test_a_bare_pass_parameter_and_a_token_in_the_fragment():
    """`pass=` (as some media servers and proxies take a password) and a token in the fragment (OAuth's
    implicit flow returns `#access_token=...`) are secrets too; names that merely contain `pass`
    (`compass=`) and other fragments are not."""
    assert redact.redact("https://media.example/a.wav?user=bob&pass=hunter2") == (
        "https://media.example/a.wav?user=bob&pass=***"
    )
    assert redact.redact("https://h/a.wav?db_pass=hunter2&x=1") == "https://h/a.wav?db_pass=***&x=1"
    assert redact.redact("https://h/a.wav#access_token=ya29.leak&expires_in=3600") == (
        "https://h/a.wav#access_token=***&expires_in=3600"
    )
    for plain in ("https://h/a.wav?compass=north", "https://h/a.wav#t=1.5", "https://h/a.wav?passage=3"):
        assert redact.redact(plain) == plain
