"""Job inputs and outputs against real servers on loopback: moto's S3 server and a small HTTP server."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from dsq_chain.executors import storage
from dsq_chain.executors.storage import StorageError
from tests.storage_fixtures import HttpServer, S3Server

MODULE = [sys.executable, "-m", "dsq_chain.executors.storage"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MODULE, *args], capture_output=True, text=True, timeout=timeout, env=env, check=False)


def keys(server: S3Server, bucket: str) -> dict[str, bytes]:
    client = server.client()
    out = {}
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        out[obj["Key"]] = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def tree(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): p.read_text(errors="replace") for p in sorted(root.rglob("*")) if p.is_file()
    }


# --- S3 ------------------------------------------------------------------------------------------


def test_s3_push_then_fetch(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    out = tmp_path / "output"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("A")
    (out / "sub" / "b.txt").write_text("B")
    proc = cli("push", str(out), f"s3://{s3_bucket}/run-1", env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert keys(s3_server, s3_bucket) == {"run-1/a.txt": b"A", "run-1/sub/b.txt": b"B"}

    dest = tmp_path / "input"
    proc = cli("fetch", f"s3://{s3_bucket}/run-1/", str(dest), env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    assert tree(dest) == {"a.txt": "A", "sub/b.txt": "B"}


def test_s3_fetch_keeps_paths_below_the_prefixs_folder(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    client = s3_server.client()
    for key in ("data/set1/x", "data/set2/y", "other/z"):
        client.put_object(Bucket=s3_bucket, Key=key, Body=key.encode())
    storage.fetch(f"s3://{s3_bucket}/data/set", tmp_path)  # as s5cmd cp 's3://b/data/set*'
    assert tree(tmp_path) == {"set1/x": "data/set1/x", "set2/y": "data/set2/y"}


def test_s3_push_uploads_only_changes_and_can_delete(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("1")
    (tmp_path / "b").write_text("2")
    assert storage.push(tmp_path, f"s3://{s3_bucket}/o/") == ["o/a", "o/b"]
    assert storage.push(tmp_path, f"s3://{s3_bucket}/o/") == []
    (tmp_path / "a").write_text("changed")
    (tmp_path / "b").unlink()
    assert storage.push(tmp_path, f"s3://{s3_bucket}/o/") == ["o/a"]
    assert set(keys(s3_server, s3_bucket)) == {"o/a", "o/b"}
    storage.push(tmp_path, f"s3://{s3_bucket}/o/", delete=True)
    assert keys(s3_server, s3_bucket) == {"o/a": b"changed"}


def test_s3_errors_have_exit_codes(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    missing_bucket = cli("fetch", "s3://dsq-no-such-bucket/x", str(tmp_path / "d"), env=env)
    assert missing_bucket.returncode == storage.EXIT_NOT_FOUND
    assert missing_bucket.stderr.startswith("dsq-storage: fetch s3://dsq-no-such-bucket/x: NoSuchBucket")
    empty = cli("fetch", f"s3://{s3_bucket}/nothing/", str(tmp_path / "d"), env=env)
    assert empty.returncode == storage.EXIT_NOT_FOUND
    assert "no object under this prefix" in empty.stderr
    bad_url = cli("fetch", "ftp://host/x", str(tmp_path / "d"), env=env)
    assert bad_url.returncode == storage.EXIT_USAGE
    assert "unsupported scheme 'ftp'" in bad_url.stderr
    not_a_dir = cli("push", str(tmp_path / "nope"), f"s3://{s3_bucket}/x", env=env)
    assert (not_a_dir.returncode, not_a_dir.stderr.count("\n")) == (storage.EXIT_USAGE, 1)
    unreachable = cli(
        "push", str(tmp_path), f"s3://{s3_bucket}/x", env=dict(env, AWS_ENDPOINT_URL="http://127.0.0.1:9"), timeout=120
    )
    assert unreachable.returncode == storage.EXIT_FAILED
    assert unreachable.stderr.count("\n") == 1 and "127.0.0.1:9" in unreachable.stderr


def test_s3_refused_credentials_exit_4(s3_auth_server: S3Server, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    env = {**os.environ, **s3_auth_server.env(), "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong"}
    for args in (["push", str(tmp_path), "s3://b/x"], ["fetch", "s3://b/x", str(tmp_path / "in")]):
        proc = cli(*args, env=env)
        assert proc.returncode == storage.EXIT_DENIED, proc.stderr
        assert "credentials refused (InvalidAccessKeyId" in proc.stderr and proc.stderr.count("\n") == 1
        assert "wrong" not in proc.stderr


def test_sync_pushes_periodically_and_once_more_on_sigterm(s3_server: S3Server, s3_bucket: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "early").write_text("e")
    proc = subprocess.Popen(
        [*MODULE, "sync", str(out), f"s3://{s3_bucket}/live", "--interval", "0.3"],
        stderr=subprocess.PIPE, text=True, env=dict(os.environ),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while "live/early" not in keys(s3_server, s3_bucket):
            assert time.monotonic() < deadline, "sync did not push within 30 s"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        (out / "late").write_text("l")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert keys(s3_server, s3_bucket) == {"live/early": b"e", "live/late": b"l"}


def test_sync_refuses_http(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="only for s3://") as info:
        storage.sync(tmp_path, "http://127.0.0.1:1/x", 1)
    assert info.value.exit_code == storage.EXIT_USAGE


# --- HTTP ----------------------------------------------------------------------------------------


def _tar_gz(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_http_fetch_plain_file(http_server: HttpServer, tmp_path: Path) -> None:
    (http_server.root / "data.csv").write_text("a,b\n")
    proc = cli("fetch", f"{http_server.url}/data.csv", str(tmp_path / "in"))
    assert proc.returncode == 0, proc.stderr
    assert tree(tmp_path / "in") == {"data.csv": "a,b\n"}


def test_http_fetch_unpacks_archives_like_deepsquare(http_server: HttpServer, tmp_path: Path) -> None:
    (http_server.root / "set.tar.gz").write_bytes(_tar_gz({"set/x.txt": "x", "y.txt": "y"}))
    storage.fetch(f"{http_server.url}/set.tar.gz", tmp_path / "t")
    assert set(tree(tmp_path / "t")) == {"set.tar.gz", "set/x.txt", "y.txt"}  # archive kept, as tar -xaf does

    with zipfile.ZipFile(http_server.root / "z.zip", "w") as zf:
        zf.writestr("inner/z.txt", "z")
    storage.fetch(f"{http_server.url}/z.zip", tmp_path / "z")
    assert tree(tmp_path / "z")["inner/z.txt"] == "z"

    import gzip

    (http_server.root / "notes.txt.gz").write_bytes(gzip.compress(b"notes"))
    storage.fetch(f"{http_server.url}/notes.txt.gz", tmp_path / "g")
    assert tree(tmp_path / "g") == {"notes.txt": "notes"}  # gunzip -df replaces the .gz


@pytest.mark.parametrize(
    ("url", "name"),
    [("http://h/a/data.csv", "data.csv"), ("http://h/d/", "d"), ("http://h/", "index.html"),
     ("http://h/x/%2e%2e", "index.html"), ("http://h/..%2F..%2Fetc%2Fpasswd", ".._.._etc_passwd")],
)  # fmt: skip
def test_downloaded_file_names_stay_in_the_folder(url: str, name: str) -> None:
    assert storage._file_name(url) == name


def test_http_fetch_refuses_members_outside_the_folder(http_server: HttpServer, tmp_path: Path) -> None:
    (http_server.root / "evil.tar.gz").write_bytes(_tar_gz({"../escaped.txt": "x"}))
    proc = cli("fetch", f"{http_server.url}/evil.tar.gz", str(tmp_path / "in"))
    assert proc.returncode == storage.EXIT_FAILED
    assert "outside" in proc.stderr
    assert not (tmp_path / "escaped.txt").exists()


def test_http_errors_have_exit_codes(http_server: HttpServer, tmp_path: Path) -> None:
    missing = cli("fetch", f"{http_server.url}/nope.bin", str(tmp_path / "in"))
    assert missing.returncode == storage.EXIT_NOT_FOUND
    assert missing.stderr.strip() == f"dsq-storage: fetch {http_server.url}/nope.bin: HTTP 404 Not Found"
    forbidden = cli("fetch", f"{http_server.url}/forbidden/x", str(tmp_path / "in"))
    assert forbidden.returncode == storage.EXIT_DENIED
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "r.txt").write_text("r")
    denied_push = cli("push", str(tmp_path / "out"), f"{http_server.url}/forbidden/")
    assert denied_push.returncode == storage.EXIT_DENIED
    assert not list(tmp_path.glob("in/.*.part")), "a failed download left a partial file"


def test_unwritable_destination_is_one_line(http_server: HttpServer, tmp_path: Path) -> None:
    (http_server.root / "d.txt").write_text("d")
    (tmp_path / "file").write_text("not a folder")
    proc = cli("fetch", f"{http_server.url}/d.txt", str(tmp_path / "file" / "in"))
    assert proc.returncode == storage.EXIT_FAILED
    assert proc.stderr.startswith("dsq-storage: fetch: ") and proc.stderr.count("\n") == 1, proc.stderr


def test_http_push_one_file_or_a_zip(http_server: HttpServer, tmp_path: Path) -> None:
    out = tmp_path / "output"
    out.mkdir()
    (out / "result.txt").write_text("42")
    one = cli("push", str(out), f"{http_server.url}/up/")
    assert one.returncode == 0, one.stderr
    assert one.stdout.strip() == f"{http_server.url}/up/result.txt"  # the server's answer is printed
    assert (http_server.root / "up" / "result.txt").read_text() == "42"

    (out / "more").mkdir()
    (out / "more" / "m.txt").write_text("m")
    many = cli("push", str(out), f"{http_server.url}/up/")
    assert many.returncode == 0, many.stderr
    with zipfile.ZipFile(http_server.root / "up" / "output.zip") as zf:
        assert sorted(zf.namelist()) == ["output/more/m.txt", "output/result.txt"]
    assert http_server.puts == ["/up/result.txt", "/up/output.zip"]
