"""A job's input and output transfers, as DeepSquare's job script does them (S3 and HTTP).

Run from a job's script with the worker's Python::

    "$DSQ_PYTHON" -m dsq_chain.executors.storage fetch s3://bucket/inputs/ "$DEEPSQUARE_INPUT"
    "$DSQ_PYTHON" -m dsq_chain.executors.storage sync "$DEEPSQUARE_OUTPUT" s3://bucket/run-7/ --interval 5 &
    "$DSQ_PYTHON" -m dsq_chain.executors.storage push "$DEEPSQUARE_OUTPUT" s3://bucket/run-7/

* ``fetch s3://bucket/prefix DIR``: every object whose key starts with ``prefix`` is saved under
  ``DIR`` by its key relative to the last ``/`` of the prefix (DeepSquare's
  ``s5cmd cp 's3://bucket/prefix*' DIR/``). No object at all is an error.
* ``fetch http(s)://... DIR``: one GET saved as the URL's last path component; archives are
  unpacked in ``DIR`` as DeepSquare does (tar of any compression and zip are extracted and kept;
  a bare ``.gz`` / ``.bz2`` / ``.xz`` is decompressed in place), recognised by content.
  Members that would land outside ``DIR`` are refused.
* ``push DIR s3://bucket/prefix``: ``s5cmd sync`` semantics: a file is uploaded when the object
  is missing, of another size, or older than the file (same second: unless the MD5 matches);
  ``--delete`` removes objects with no file.
* ``push DIR http(s)://URL``: one PUT (``curl --upload-file``): the only file of ``DIR`` as is,
  else ``DIR`` zipped as ``output.zip``; a URL ending in ``/`` gets the file name appended. The
  server's answer (a download link for transfer.sh-like services) is printed.
* ``sync DIR s3://... --interval S``: ``push`` every ``S`` seconds until SIGTERM/SIGINT, then one
  final push (DeepSquare's ``continuousOutputSync``). HTTP has no sync, as in DeepSquare.

S3 settings come from the usual variables: ``AWS_ENDPOINT_URL`` (or DeepSquare's
``S3_ENDPOINT_URL``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION`` (default ``us-east-1``).

Exit status: 0 done; 2 bad arguments or URL; 3 nothing at the source (404, no such bucket,
no object); 4 refused credentials (401/403); 5 transfer or server failure; each with one line
``dsq-storage: <what>: ...`` on stderr.
"""

from __future__ import annotations

import argparse
import bz2
import gzip
import hashlib
import lzma
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_DENIED = 4
EXIT_FAILED = 5


class StorageError(Exception):
    """A transfer failed; ``exit_code`` is the CLI's status for it (see the module doc)."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class S3Url:
    bucket: str
    prefix: str

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"


def parse_s3_url(url: str) -> S3Url:
    """``s3://bucket[/prefix]`` → bucket and key prefix (no leading ``/``)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise StorageError(f"{url!r} is not an s3://bucket/prefix URL", EXIT_USAGE)
    return S3Url(parsed.netloc, parsed.path.lstrip("/"))


def _scheme(url: str) -> str:
    scheme = urllib.parse.urlparse(url).scheme.lower()
    if scheme not in ("s3", "http", "https"):
        raise StorageError(
            f"{url!r}: unsupported scheme {scheme or '(none)'!r}; expected s3://, http:// or https://", EXIT_USAGE
        )
    return scheme


# --- S3 --------------------------------------------------------------------------------------------


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment (endpoint, credentials, region)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError:  # pragma: no cover - boto3 is a dependency of dsq-chain
        raise StorageError("boto3 is not installed in this Python: pip install boto3", EXIT_FAILED) from None
    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("S3_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    config = Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=config)


def _s3_error(exc: Exception, what: str) -> StorageError:
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(exc, NoCredentialsError):
        return StorageError(f"{what}: no S3 credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)", EXIT_DENIED)
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code, msg = str(err.get("Code", "")), str(err.get("Message", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in ("NoSuchBucket", "NoSuchKey", "404") or status == 404:
            return StorageError(f"{what}: {code or 'not found'} {msg}".rstrip(), EXIT_NOT_FOUND)
        if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status in (401, 403):
            return StorageError(f"{what}: credentials refused ({code}: {msg})", EXIT_DENIED)
        return StorageError(f"{what}: {code} {msg}".rstrip(), EXIT_FAILED)
    if isinstance(exc, BotoCoreError):
        return StorageError(f"{what}: {exc}", EXIT_FAILED)
    return StorageError(f"{what}: {exc}", EXIT_FAILED)


def _s3_objects(client: Any, url: S3Url) -> Iterator[dict[str, Any]]:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=url.prefix):
        yield from page.get("Contents", [])


def _safe_join(root: Path, rel: str, what: str) -> Path:
    target = (root / rel).resolve()
    base = root.resolve()
    if target != base and base not in target.parents:
        raise StorageError(f"{what}: {rel!r} would be written outside {root}", EXIT_FAILED)
    return target


def fetch_s3(url: str, dest: Path, client: Any = None) -> list[Path]:
    """Download every object under the prefix into ``dest``; return the files written."""
    s3 = parse_s3_url(url)
    client = client or s3_client()
    base = s3.prefix[: s3.prefix.rfind("/") + 1]
    written: list[Path] = []
    try:
        for obj in _s3_objects(client, s3):
            key = obj["Key"]
            if key.endswith("/"):
                continue  # a "folder" marker
            target = _safe_join(dest, key[len(base) :], f"fetch {url}")
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(s3.bucket, key, str(target))
            written.append(target)
    except StorageError:
        raise
    except Exception as exc:
        raise _s3_error(exc, f"fetch {url}") from None
    if not written:
        raise StorageError(f"fetch {url}: no object under this prefix", EXIT_NOT_FOUND)
    return written


def _files(src: Path) -> list[Path]:
    return sorted(p for p in src.rglob("*") if p.is_file())


def _unchanged(path: Path, st: os.stat_result, obj: dict[str, Any]) -> bool:
    """True when the object already holds the file: same size, and stored a whole second after the
    file last changed (S3 dates have second resolution) or, within that second, the same MD5."""
    if obj["Size"] != st.st_size:
        return False
    if obj["LastModified"].timestamp() >= int(st.st_mtime) + 1:
        return True
    etag = str(obj.get("ETag", "")).strip('"')
    if not etag or "-" in etag:  # multipart uploads have no plain MD5 ETag
        return False
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest() == etag


def push_s3(src: Path, url: str, *, delete: bool = False, client: Any = None) -> list[str]:
    """Upload the files of ``src`` that changed (``s5cmd sync``); return the keys uploaded."""
    s3 = parse_s3_url(url)
    client = client or s3_client()
    prefix = s3.prefix if not s3.prefix or s3.prefix.endswith("/") else s3.prefix + "/"
    uploaded: list[str] = []
    try:
        remote = {o["Key"]: o for o in _s3_objects(client, S3Url(s3.bucket, prefix))}
        local = {prefix + p.relative_to(src).as_posix(): p for p in _files(src)}
        for key, path in local.items():
            st = path.stat()
            obj = remote.get(key)
            if obj is not None and _unchanged(path, st, obj):
                continue
            client.upload_file(str(path), s3.bucket, key)
            uploaded.append(key)
        if delete:
            for key in sorted(set(remote) - set(local)):
                client.delete_object(Bucket=s3.bucket, Key=key)
    except Exception as exc:
        raise _s3_error(exc, f"push {src} to {url}") from None
    return uploaded


# --- HTTP ------------------------------------------------------------------------------------------


def _http_error(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, urllib.error.HTTPError):
        code = EXIT_NOT_FOUND if exc.code in (404, 410) else EXIT_DENIED if exc.code in (401, 403) else EXIT_FAILED
        return StorageError(f"{what}: HTTP {exc.code} {exc.reason}", code)
    if isinstance(exc, urllib.error.URLError):
        return StorageError(f"{what}: {exc.reason}", EXIT_FAILED)
    return StorageError(f"{what}: {exc}", EXIT_FAILED)


def _file_name(url: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
    name = name.replace("/", "_").replace("\0", "_")  # an encoded %2F must not make a path
    return name if name not in ("", ".", "..") else "index.html"


def fetch_http(url: str, dest: Path, timeout: float = 600) -> list[Path]:
    """GET ``url`` into ``dest``, unpack it when it is an archive; return the files now there."""
    target = dest / _file_name(url)
    partial = dest / f".{target.name}.part"
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=timeout) as resp, open(partial, "wb") as out:
            shutil.copyfileobj(resp, out)
        os.replace(partial, target)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise _http_error(exc, f"fetch {url}") from None
    unpack(target, dest)
    return _files(dest)


def unpack(path: Path, dest: Path) -> None:
    """Unpack ``path`` in ``dest`` the way DeepSquare's job script does (by content, not name)."""
    what = f"unpack {path.name}"
    try:
        if tarfile.is_tarfile(path):
            with tarfile.open(path) as tar:
                for member in tar.getmembers():
                    _safe_join(dest, member.name, what)
                    if member.issym() or member.islnk():
                        _safe_join(dest, os.path.join(os.path.dirname(member.name), member.linkname), what)
                if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: also refuses devices, absolute links
                    tar.extractall(dest, filter="data")
                else:  # pragma: no cover
                    tar.extractall(dest)
            return
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                for name in zf.namelist():
                    _safe_join(dest, name, what)
                zf.extractall(dest)
            return
        with open(path, "rb") as f:
            magic = f.read(6)
        openers: dict[bytes, Callable[[Path], Any]] = {
            b"\x1f\x8b": gzip.open, b"BZh": bz2.open, b"\xfd7zXZ": lzma.open,
        }  # fmt: skip
        for sig, opener in openers.items():
            if magic.startswith(sig):
                stem = path.name.rsplit(".", 1)[0] if "." in path.name else path.name + ".out"
                with opener(path) as src, open(dest / stem, "wb") as out:
                    shutil.copyfileobj(src, out)
                path.unlink()
                return
    except StorageError:
        raise
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError, lzma.LZMAError) as exc:
        raise StorageError(f"{what}: not a valid archive ({exc})", EXIT_FAILED) from None


def push_http(src: Path, url: str, timeout: float = 600) -> str:
    """PUT the output (one file as is, else ``output.zip``); return the server's answer."""
    files = _files(src)
    if not files:
        raise StorageError(f"push {src} to {url}: nothing to upload ({src} has no file)", EXIT_NOT_FOUND)
    with tempfile.TemporaryDirectory() as tmp:
        if len(files) == 1:
            payload = files[0]
        else:
            payload = Path(tmp) / "output.zip"
            with zipfile.ZipFile(payload, "w", zipfile.ZIP_DEFLATED) as zf:
                for p in files:
                    zf.write(p, (Path(src.name) / p.relative_to(src)).as_posix())
        target = url + urllib.parse.quote(payload.name) if url.endswith("/") else url
        try:
            with open(payload, "rb") as body:
                req = urllib.request.Request(target, data=body, method="PUT")
                req.add_header("Content-Length", str(payload.stat().st_size))
                with urllib.request.urlopen(req, timeout=timeout) as resp:
                    return bytes(resp.read()).decode(errors="replace").strip()
        except Exception as exc:
            raise _http_error(exc, f"push {src} to {target}") from None


# --- entry points ----------------------------------------------------------------------------------


def fetch(url: str, dest: Path | str) -> list[Path]:
    """Fetch ``url`` (S3 prefix or HTTP file) into the folder ``dest`` (created)."""
    scheme = _scheme(url)
    d = Path(dest)
    d.mkdir(parents=True, exist_ok=True)
    return fetch_s3(url, d) if scheme == "s3" else fetch_http(url, d)


def push(src: Path | str, url: str, *, delete: bool = False) -> list[str]:
    """Upload the folder ``src`` to ``url``; return what was uploaded (keys, or the server's answer)."""
    scheme = _scheme(url)
    s = Path(src)
    if not s.is_dir():
        raise StorageError(f"push {src}: not a folder", EXIT_USAGE)
    if scheme == "s3":
        return push_s3(s, url, delete=delete)
    if delete:
        raise StorageError("push --delete: only for s3:// outputs", EXIT_USAGE)
    return [push_http(s, url)]


def sync(
    src: Path | str, url: str, interval_s: float, *, delete: bool = False, stop: threading.Event | None = None
) -> int:
    """Push every ``interval_s`` until ``stop`` is set (SIGTERM/SIGINT in the CLI), then push once more.

    A failed periodic push is reported on stderr and retried at the next tick; the final push's
    failure raises. Returns the number of pushes made.
    """
    if _scheme(url) != "s3":
        raise StorageError(
            f"sync to {url}: continuous sync is only for s3:// outputs (as in DeepSquare); use push", EXIT_USAGE
        )
    if interval_s <= 0:
        raise StorageError(f"sync --interval {interval_s:g}: expected seconds > 0", EXIT_USAGE)
    stop = stop or threading.Event()
    pushes = 0
    while not stop.wait(interval_s):
        try:
            push(src, url, delete=delete)
        except StorageError as exc:
            print(f"dsq-storage: periodic {exc} (retrying in {interval_s:g} s)", file=sys.stderr, flush=True)
        pushes += 1
    push(src, url, delete=delete)
    return pushes + 1


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsq_chain.executors.storage", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fetch", help="download URL into DIR (archives unpacked)")
    f.add_argument("url")
    f.add_argument("dir")
    for name in ("push", "sync"):
        q = sub.add_parser(name, help="upload DIR to URL" + (" periodically until SIGTERM" if name == "sync" else ""))
        q.add_argument("dir")
        q.add_argument("url")
        q.add_argument("--delete", action="store_true", help="S3: remove objects that have no file any more")
        if name == "sync":
            q.add_argument("--interval", type=float, default=5.0, metavar="S")
    args = p.parse_args(argv)
    try:
        if args.action == "fetch":
            fetch(args.url, args.dir)
        elif args.action == "push":
            for line in push(args.dir, args.url, delete=args.delete):
                if not args.url.startswith("s3://"):
                    print(line)
        else:
            stop = threading.Event()

            def on_signal(_sig: int, _frame: FrameType | None) -> None:
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            sync(args.dir, args.url, args.interval, delete=args.delete, stop=stop)
    except StorageError as exc:
        print(f"dsq-storage: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # the local side: permissions, disk full
        print(f"dsq-storage: {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
