"""Containers without a daemon: pull OCI images into a cache once per digest, run commands in them.

A DeepSquare ``run.container`` step becomes one call of this module, from the job's script::

    "$DSQ_PYTHON" -m dsq_chain.executors.containers run --image library/busybox:latest \\
        --mount "$DATA:/data:ro" --env GREETING=hi --workdir /data -- /bin/sh -c 'echo $GREETING'

* **Pull** (:func:`pull`): ``skopeo inspect --raw`` asks the registry which manifest the
  reference names; its SHA-256 is the image's digest. Under a file lock for that digest
  (concurrent pulls of one image wait for each other), an image not yet in the cache is copied
  by digest with ``skopeo copy`` into an OCI layout and unpacked with ``umoci unpack --rootless``
  into ``<cache>/images/<hex>/`` (``rootfs/`` and the runtime ``config.json``); the folder
  appears by an atomic rename, so a half-pulled image is never used. Each real pull appends a
  line to ``<cache>/pulls.log``. A run holds a shared lock on its image; :func:`prune` removes
  images unused for a while and never one in use.
* **Run** (:func:`run`): ``bwrap`` (bubblewrap) runs the command with the image as ``/``: an
  overlay of ``rootfs`` under a tmpfs private to the run (like Apptainer's ``--writable-tmpfs``),
  mounted in a mount namespace of its own (plus a user namespace when not root): the command may
  write anywhere, the cache never changes. ``read_only`` (DeepSquare's ``readOnlyRootFS``)
  remounts ``/`` read-only; ``/tmp`` is always a fresh tmpfs.
  Like Apptainer, the container shares the host's network, PIDs, IPC and ``/dev/shm`` (MPI ranks
  of one ``srun`` reach each other; ``PMIX_SERVER_TMPDIR`` is bound at its own path) and sees
  ``/sys``, a fresh ``/proc``, a minimal ``/dev``.
* **DeepSquare folders**: when ``STORAGE_PATH`` is set (the job's script exports it), it is
  bound at ``/deepsquare`` and ``STORAGE_PATH``, ``DEEPSQUARE_INPUT``, ``DEEPSQUARE_OUTPUT``,
  ``DEEPSQUARE_ENV`` and the ``DEEPSQUARE_*TMP`` folders are rewritten to their paths inside,
  exactly as DeepSquare's Apptainer and Enroot renderers do.

Environment inside: the image's ``Env``, then the caller's environment (minus ``PATH``,
``HOME``, ``LD_*``, ``PYTHON*`` and the registry credentials), then the DeepSquare paths, then
``--env``. Work directory: ``--workdir`` (created when missing), else the image's, else ``/``.

Settings from the environment: ``DSQ_DEFAULT_REGISTRY`` (registry of references that name none;
default ``docker.io``), ``DSQ_REGISTRY_USERNAME`` / ``DSQ_REGISTRY_PASSWORD`` (handed to skopeo
in a private auth file, never on a command line), ``DSQ_IMAGE_CACHE`` (default
``$XDG_CACHE_HOME/dsq-chain/images`` or ``~/.cache/dsq-chain/images``),
``DSQ_INSECURE_REGISTRIES`` (comma-separated hosts spoken to over plain HTTP; loopback
registries always are, as in Docker).

Exit status of the CLI: the command's; 125 with one line ``dsq-container: <reason>: ...`` on
stderr when the container could not be started (reasons in :class:`ContainerError`); 127 when the
command does not exist in the image.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import ctypes.util
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Exit status when the container could not be started (as ``docker run`` / ``podman run``).
EXIT_CONTAINER_ERROR = 125
#: Exit status when the command is not in the image (as a shell's "command not found").
EXIT_COMMAND_NOT_FOUND = 127

DEFAULT_REGISTRY = "docker.io"
#: Tool → the Debian package that ships it.
TOOLS = {"skopeo": "skopeo", "umoci": "umoci", "bwrap": "bubblewrap"}
#: Variables of the caller never passed into a container.
_HOST_ONLY_ENV = re.compile(
    r"^(PATH|HOME|PWD|OLDPWD|SHLVL|_|TMPDIR|VIRTUAL_ENV|LD_.*|PYTHON.*|DSQ_REGISTRY_USERNAME|DSQ_REGISTRY_PASSWORD)$"
)
#: DeepSquare's folders: host variable → path inside the container (their Apptainer/Enroot renderers).
DEEPSQUARE_MOUNTS = (
    ("STORAGE_PATH", "/deepsquare"),
    ("DEEPSQUARE_SHARED_TMP", "/deepsquare/tmp"),
    ("DEEPSQUARE_SHARED_WORLD_TMP", "/deepsquare/world-tmp"),
    ("DEEPSQUARE_DISK_TMP", "/deepsquare/disk/tmp"),
    ("DEEPSQUARE_DISK_WORLD_TMP", "/deepsquare/disk/world-tmp"),
)
_NAME_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ContainerError(Exception):
    """The container could not be started; ``reason`` names why in one word.

    Reasons: ``tool-missing``, ``bad-reference``, ``bad-mount``, ``image-not-found``,
    ``registry-auth``, ``registry-unreachable``, ``registry-error``, ``cache-error``,
    ``unpack-failed``, ``run-failed``. ``image-not-found``, ``registry-auth``, ``bad-reference`` and ``bad-mount``
    are the job's fault; the others the provider's (or the registry's).
    """

    USER_FAULTS = frozenset({"bad-reference", "bad-mount", "image-not-found", "registry-auth"})

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message

    @property
    def user_fault(self) -> bool:
        """True when the job asked for something wrong (not the provider's fault)."""
        return self.reason in self.USER_FAULTS


# --- references ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """A fully qualified image reference: ``registry/repository`` with a tag or a digest."""

    registry: str
    repository: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        return f"{self.registry}/{self.repository}" + (f"@{self.digest}" if self.digest else f":{self.tag}")

    def transport(self, digest: str | None = None) -> str:
        """The skopeo ``docker://`` name, pinned to ``digest`` when given."""
        d = digest or self.digest
        return f"docker://{self.registry}/{self.repository}" + (f"@{d}" if d else f":{self.tag}")


def _looks_like_host(component: str) -> bool:
    return "." in component or ":" in component or component == "localhost"


def parse_image_ref(image: str, registry: str | None = None, default_registry: str | None = None) -> ImageRef:
    """Qualify ``image`` as Docker and DeepSquare do.

    ``image`` may be ``docker://host/repo:tag``, ``host/repo@sha256:...``, ``repo:tag`` or
    ``name``; ``registry`` (DeepSquare's ``container.registry``) prefixes an image that names
    no host; else ``default_registry`` (``DSQ_DEFAULT_REGISTRY``, else ``docker.io``). A
    single-component name on Docker Hub gets ``library/``; the tag defaults to ``latest``.
    """
    raw = image.strip()
    if raw.startswith("docker://"):
        raw = raw[len("docker://") :]
    elif "://" in raw or raw.startswith("/"):
        raise ContainerError(
            "bad-reference", f"image {image!r}: expected a docker:// reference or registry/repository[:tag]"
        )
    if not raw:
        raise ContainerError("bad-reference", "image reference is empty")
    digest = tag = None
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        if not _DIGEST_RE.match(digest):
            raise ContainerError("bad-reference", f"image {image!r}: digest {digest!r} is not sha256:<64 hex>")
    first, _, rest = raw.partition("/")
    if rest and _looks_like_host(first):
        host, path = first, rest
    else:
        host = (registry or default_registry or os.environ.get("DSQ_DEFAULT_REGISTRY") or DEFAULT_REGISTRY).strip()
        host = host.removeprefix("docker://").removeprefix("https://").removeprefix("http://").rstrip("/")
        path = raw
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG_RE.match(tag):
            raise ContainerError("bad-reference", f"image {image!r}: tag {tag!r} is not a valid tag")
    if not digest and not tag:
        tag = "latest"
    if host in ("docker.io", "index.docker.io", "registry-1.docker.io") and "/" not in path:
        path = f"library/{path}"
    if not _NAME_RE.match(path):
        raise ContainerError(
            "bad-reference", f"image {image!r}: repository {path!r} must be lowercase [a-z0-9] parts joined by . _ - /"
        )
    return ImageRef(host, path, tag, digest)


def _insecure(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    if name in ("localhost", "[::1]") or name.startswith("127."):
        return True
    listed = {h.strip() for h in os.environ.get("DSQ_INSECURE_REGISTRIES", "").split(",") if h.strip()}
    return host in listed or name in listed


# --- tools and cache -------------------------------------------------------------------------------


def require_tool(name: str) -> str:
    """Absolute path of ``name`` (``skopeo``, ``umoci``, ``bwrap``) or a ``tool-missing`` error."""
    found = shutil.which(name)
    if not found:
        pkg = TOOLS.get(name, name)
        raise ContainerError(
            "tool-missing", f"{name} is not installed: install the Debian package {pkg} (apt-get install {pkg})"
        )
    return found


def image_cache_dir(cache: Path | str | None = None) -> Path:
    """The image cache: ``cache``, else ``$DSQ_IMAGE_CACHE``, else ``<user cache dir>/dsq-chain/images``."""
    if cache is not None:
        return Path(cache)
    env = os.environ.get("DSQ_IMAGE_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dsq-chain" / "images"


@dataclass(frozen=True)
class Credentials:
    """Registry login; from ``DSQ_REGISTRY_USERNAME`` / ``DSQ_REGISTRY_PASSWORD`` by default."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Credentials | None:
        e = os.environ if env is None else env
        user, password = e.get("DSQ_REGISTRY_USERNAME", ""), e.get("DSQ_REGISTRY_PASSWORD", "")
        return cls(user, password) if user or password else None


@contextlib.contextmanager
def _authfile(registry: str, credentials: Credentials | None) -> Iterator[list[str]]:
    """skopeo arguments for ``credentials``, via a 0600 auth file removed afterwards."""
    if credentials is None:
        yield []
        return
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    fd, path = tempfile.mkstemp(prefix="dsq-auth-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": {registry: {"auth": token}}}, f)
        yield ["--authfile", path]
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _classify(ref: ImageRef, stderr: str) -> ContainerError:
    text = stderr.strip()
    last = text.splitlines()[-1] if text else "no output"
    if m := re.search(r'msg="((?:[^"\\]|\\.)*)"', last):
        last = m.group(1).replace('\\"', '"')
    low = text.lower()
    detail = f"(skopeo: {last[-300:]})"
    if "manifest unknown" in low or "name unknown" in low or ("not found" in low and "manifest" in low):
        return ContainerError("image-not-found", f"{ref} is not in the registry {detail}")
    if any(s in low for s in ("unauthorized", "authentication required", "denied", "invalid username/password", "401")):
        return ContainerError("registry-auth", f"{ref.registry} refused the credentials for {ref} {detail}")
    if "server gave http response to https client" in low:
        return ContainerError(
            "registry-error",
            f"{ref.registry} speaks plain HTTP: add it to DSQ_INSECURE_REGISTRIES or pass --insecure {detail}",
        )
    if any(
        s in low for s in ("connection refused", "no such host", "i/o timeout", "dial tcp", "network is unreachable")
    ):
        return ContainerError("registry-unreachable", f"cannot reach {ref.registry} for {ref} {detail}")
    return ContainerError("registry-error", f"{ref.registry} failed for {ref} {detail}")


def _skopeo(args: list[str], ref: ImageRef, timeout: float) -> subprocess.CompletedProcess[bytes]:
    try:
        proc = subprocess.run(
            [require_tool("skopeo"), *args], capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise ContainerError(
            "registry-unreachable", f"{ref.registry} did not answer within {timeout:g} s for {ref}"
        ) from None
    if proc.returncode != 0:
        raise _classify(ref, proc.stderr.decode(errors="replace"))
    return proc


def resolve_digest(
    ref: ImageRef, *, insecure: bool | None = None, credentials: Credentials | None = None, timeout: float = 120
) -> str:
    """The ``sha256:`` digest of the manifest ``ref`` names (asks the registry unless pinned)."""
    if ref.digest:
        return ref.digest
    tls = _insecure(ref.registry) if insecure is None else insecure
    with _authfile(ref.registry, credentials) as auth:
        proc = _skopeo(
            ["inspect", "--raw", *(["--tls-verify=false"] if tls else []), *auth, ref.transport()], ref, timeout
        )
    return "sha256:" + hashlib.sha256(proc.stdout).hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_image(digest: str, cache: Path | str | None = None) -> Path | None:
    """The unpacked bundle of ``digest`` when it is in the cache, else ``None``."""
    bundle = image_cache_dir(cache) / "images" / digest.removeprefix("sha256:")
    return bundle if (bundle / "image.json").is_file() else None


@contextlib.contextmanager
def _in_use(get: Callable[[], Path]) -> Iterator[Path]:
    """Hold the bundle ``get()`` returns under a shared lock (so :func:`prune` leaves it) and mark it used.

    Not the pull lock: a run holding that would keep a concurrent pull of the same image (the
    other rank of an MPI step, which this run waits for) from ever seeing the finished image.
    """
    for _ in range(3):
        bundle = get()
        with open(bundle.parent.parent / "locks" / f"{bundle.name}.use", "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            if (bundle / "image.json").is_file():  # not pruned between the pull and the lock
                with contextlib.suppress(OSError):
                    os.utime(bundle / "image.json")
                yield bundle
                return
    raise ContainerError("cache-error", f"{bundle.name} keeps disappearing from the cache (a prune running?)")


def prune(unused_for_s: float, cache: Path | str | None = None) -> list[str]:
    """Remove cached images no container uses now and none used for ``unused_for_s`` seconds.

    Returns the digests removed. An image being pulled or run is never touched.
    """
    root = image_cache_dir(cache)
    removed: list[str] = []
    for bundle in sorted((root / "images").glob("*")):
        trash = None
        with open(root / "locks" / f"{bundle.name}.use", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # in use
            try:
                last_used = (bundle / "image.json").stat().st_mtime
            except FileNotFoundError:
                last_used = 0.0
            if time.time() - last_used >= unused_for_s:
                trash = root / "tmp" / f"{bundle.name}-prune-{secrets.token_hex(4)}"
                os.rename(bundle, trash)
                removed.append(f"sha256:{bundle.name}")
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    return removed


def pull(
    image: str | ImageRef,
    *,
    registry: str | None = None,
    insecure: bool | None = None,
    credentials: Credentials | None = None,
    cache: Path | str | None = None,
    timeout: float = 900,
) -> Path:
    """Make sure ``image`` is unpacked in the cache; return its bundle (``rootfs/``, ``config.json``).

    Asks the registry for the digest (one small request), then pulls and unpacks only when that
    digest is not cached yet, under a per-digest file lock. ``credentials`` default to
    :meth:`Credentials.from_env`. Raises :class:`ContainerError`.
    """
    ref = image if isinstance(image, ImageRef) else parse_image_ref(image, registry)
    creds = credentials if credentials is not None else Credentials.from_env()
    root = image_cache_dir(cache)
    try:
        for sub in ("images", "locks", "tmp", "mnt"):
            (root / sub).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ContainerError("cache-error", f"image cache {root} unusable (set DSQ_IMAGE_CACHE): {exc}") from None
    if ref.digest and (hit := cached_image(ref.digest, root)):
        return hit
    digest = resolve_digest(ref, insecure=insecure, credentials=creds, timeout=min(timeout, 120))
    if hit := cached_image(digest, root):  # bundles appear by an atomic rename: no lock needed to see one
        return hit
    hexd = digest.removeprefix("sha256:")
    bundle = root / "images" / hexd
    with _locked(root / "locks" / f"{hexd}.lock"):
        if cached_image(digest, root):
            return bundle
        umoci = require_tool("umoci")
        tls = _insecure(ref.registry) if insecure is None else insecure
        for stale in (root / "tmp").glob(f"{hexd}-*"):  # a pull of this digest that was killed
            shutil.rmtree(stale, ignore_errors=True)
        work = root / "tmp" / f"{hexd}-{secrets.token_hex(4)}"
        work.mkdir(parents=True)
        try:
            started = time.time()
            with _authfile(ref.registry, creds) as auth:
                src_auth = ["--src-authfile", auth[1]] if auth else []
                _skopeo(
                    ["copy", "--quiet", *(["--src-tls-verify=false"] if tls else []), *src_auth,
                     ref.transport(digest), f"oci:{work / 'oci'}:image"],
                    ref, timeout,
                )  # fmt: skip
            proc = subprocess.run(
                [umoci, "unpack", "--rootless", "--image", f"{work / 'oci'}:image", str(work / "bundle")],
                capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            if proc.returncode != 0:
                raise ContainerError("unpack-failed", f"umoci could not unpack {ref}: {proc.stderr.strip()[-300:]}")
            shutil.rmtree(work / "oci")
            record = {"reference": str(ref), "digest": digest, "pulled_at": started, "pid": os.getpid()}
            (work / "bundle" / "image.json").write_text(json.dumps(record, indent=1))
            bundle.parent.mkdir(parents=True, exist_ok=True)
            os.rename(work / "bundle", bundle)
            with open(root / "pulls.log", "a") as log:
                log.write(json.dumps(record) + "\n")
        except subprocess.TimeoutExpired:
            raise ContainerError("unpack-failed", f"umoci did not unpack {ref} within {timeout:g} s") from None
        except OSError as exc:
            raise ContainerError("unpack-failed", f"could not store {ref} in the cache {root}: {exc}") from None
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return bundle


# --- running ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mount:
    """A host folder or file bound into the container."""

    source: str
    target: str
    read_only: bool = False

    @classmethod
    def parse(cls, spec: str) -> Mount:
        """``SRC:DST[:ro|rw]`` (DeepSquare's ``hostDir``, ``containerDir``, ``options``)."""
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise ContainerError("bad-mount", f"mount {spec!r}: expected SRC:DST or SRC:DST:ro|rw")
        opts = parts[2] if len(parts) == 3 else "rw"
        if opts not in ("ro", "rw"):
            raise ContainerError("bad-mount", f"mount {spec!r}: option {opts!r} is neither ro nor rw")
        if not parts[1].startswith("/"):
            raise ContainerError("bad-mount", f"mount {spec!r}: container path {parts[1]!r} must be absolute")
        return cls(parts[0], parts[1], opts == "ro")


def image_config(bundle: Path) -> dict[str, Any]:
    """The runtime ``process`` section umoci wrote from the image's config (env, cwd, args)."""
    try:
        config = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ContainerError("unpack-failed", f"{bundle}/config.json unreadable: {exc}") from None
    process = config.get("process") or {}
    return process if isinstance(process, dict) else {}


def container_env(bundle: Path, host_env: Mapping[str, str], extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment inside: image ``Env``, the host's (filtered), DeepSquare paths, ``extra``."""
    env: dict[str, str] = {}
    for item in image_config(bundle).get("env") or []:
        k, sep, v = str(item).partition("=")
        if sep:
            env[k] = v
    env.update({k: v for k, v in host_env.items() if not _HOST_ONLY_ENV.match(k)})
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env.setdefault("HOME", "/root" if os.geteuid() == 0 else "/")
    if host_env.get("STORAGE_PATH"):
        env.update(
            STORAGE_PATH="/deepsquare",
            DEEPSQUARE_TMP="/deepsquare/tmp",
            DEEPSQUARE_SHARED_TMP="/deepsquare/tmp",
            DEEPSQUARE_SHARED_WORLD_TMP="/deepsquare/world-tmp",
            DEEPSQUARE_DISK_TMP="/deepsquare/disk/tmp",
            DEEPSQUARE_DISK_WORLD_TMP="/deepsquare/disk/world-tmp",
            DEEPSQUARE_INPUT="/deepsquare/input",
            DEEPSQUARE_OUTPUT="/deepsquare/output",
        )
        if host_env.get("DEEPSQUARE_ENV"):
            env["DEEPSQUARE_ENV"] = "/deepsquare/" + os.path.basename(host_env["DEEPSQUARE_ENV"])
    for k, v in (extra or {}).items():
        if not _ENV_NAME_RE.match(k):
            raise ContainerError("bad-reference", f"--env {k}={v!r}: {k!r} is not a variable name")
        env[k] = v
    return env


def deepsquare_mounts(host_env: Mapping[str, str]) -> list[Mount]:
    """DeepSquare's folders bound into every container (only when ``STORAGE_PATH`` is set)."""
    if not host_env.get("STORAGE_PATH"):
        return []
    mounts = []
    for var, target in DEEPSQUARE_MOUNTS:
        src = host_env.get(var) or (host_env.get("DEEPSQUARE_TMP") if var == "DEEPSQUARE_SHARED_TMP" else None)
        if src and os.path.isdir(src):
            mounts.append(Mount(src, target))
    return mounts


def launcher_mounts(host_env: Mapping[str, str]) -> list[Mount]:
    """Folders the MPI launcher shares with its ranks, bound at the same path (srun --mpi=pmix*).

    PMIx clients find the server's shared-memory store under ``PMIX_SERVER_TMPDIR``; a rank in
    a container must see it there too.
    """
    mounts = []
    for var in ("PMIX_SERVER_TMPDIR",):
        path = host_env.get(var, "").rstrip("/")
        if path and path not in ("/tmp", "/") and os.path.isdir(path):
            mounts.append(Mount(path, path))
    return mounts


def _under(path: str, targets: Sequence[str]) -> bool:
    return any(path == t or path.startswith(t.rstrip("/") + "/") for t in targets)


def _in_image(rootfs: Path, path: str) -> bool:
    return os.path.lexists(rootfs / path.lstrip("/"))


def find_command(rootfs: Path, command: str, path_var: str, mounts: Sequence[Mount]) -> bool:
    """True when ``command`` exists in the image (or under a mount, which is not checked)."""
    if "/" in command:
        if not command.startswith("/") or _under(command, [m.target for m in mounts]):
            return True
        return _in_image(rootfs, command)
    return any(_in_image(rootfs, f"{d}/{command}") for d in path_var.split(":") if d.startswith("/"))


def bwrap_argv(
    root: Path,
    command: Sequence[str],
    *,
    mounts: Sequence[Mount] = (),
    workdir: str = "/",
    read_only: bool = False,
    map_uid: int | None = None,
    map_gid: int | None = None,
    bwrap: str = "bwrap",
) -> list[str]:
    """The ``bwrap`` command line running ``command`` with ``root`` (the overlay) as ``/``.

    Mount points missing from the image (``/proc``, mount targets) are created in ``root``, so
    ``root`` must be a throw-away layer; ``read_only`` remounts ``/`` read-only once it is set up.
    """
    argv = [bwrap, "--die-with-parent"]
    if map_uid is not None or map_gid is not None:
        argv += ["--unshare-user"]
        argv += ["--uid", str(map_uid if map_uid is not None else os.geteuid())]
        argv += ["--gid", str(map_gid if map_gid is not None else os.getegid())]
    argv += ["--bind", str(root), "/"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--ro-bind", "/sys", "/sys", "--tmpfs", "/tmp"]
    if os.path.isdir("/dev/shm"):
        argv += ["--bind", "/dev/shm", "/dev/shm"]
    for dev in sorted(Path("/dev").glob("nvidia*")):
        argv += ["--dev-bind", str(dev), str(dev)]
    for f in ("/etc/resolv.conf", "/etc/hosts"):
        if os.path.isfile(f):
            argv += ["--ro-bind", f, f]
    for m in mounts:
        argv += ["--ro-bind" if m.read_only else "--bind", m.source, m.target]
    if workdir != "/" and (not read_only or _under(workdir, [m.target for m in mounts if not m.read_only] + ["/tmp"])):
        argv += ["--dir", workdir]
    if read_only:
        argv += ["--remount-ro", "/"]
    argv += ["--chdir", workdir, "--", *command]
    return argv


_libc: Any = None


def _mount_overlay(rootfs: Path, scratch: Path) -> None:
    """In a new mount namespace of this (child) process: ``scratch/merged`` = rootfs + a tmpfs layer."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc = _libc
    clone_newns, clone_newuser, ms_rec, ms_private = 0x00020000, 0x10000000, 0x4000, 0x40000

    def check(rc: int, what: str) -> None:
        if rc != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")

    if os.geteuid() == 0:
        check(libc.unshare(clone_newns), "unshare(CLONE_NEWNS)")
    else:  # a user namespace mapping only ourselves gives the right to mount tmpfs and overlay (Linux >= 5.11)
        uid, gid = os.geteuid(), os.getegid()
        check(libc.unshare(clone_newns | clone_newuser), "unshare(CLONE_NEWUSER | CLONE_NEWNS)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    check(libc.mount(b"none", b"/", None, ms_rec | ms_private, None), "make / private")
    check(libc.mount(b"tmpfs", str(scratch).encode(), b"tmpfs", 0, b"mode=0755"), "mount tmpfs")
    for d in ("upper", "work", "merged"):
        os.mkdir(scratch / d)
    opts = f"lowerdir={rootfs},upperdir={scratch}/upper,workdir={scratch}/work".encode()
    check(libc.mount(b"overlay", str(scratch / "merged").encode(), b"overlay", 0, opts), "mount overlay")


def _start_bwrap(args: list[str], env: dict[str, str], child_setup: Callable[[], None]) -> subprocess.Popen[bytes]:
    try:
        return subprocess.Popen(args, env=env, preexec_fn=child_setup)
    except subprocess.SubprocessError as exc:
        raise ContainerError(
            "run-failed",
            f"could not mount the container's overlay root ({exc}; without root this needs Linux >= 5.11 "
            "with unprivileged user namespaces)",
        ) from None
    except OSError as exc:
        raise ContainerError("run-failed", f"could not start bwrap: {exc}") from None


def _forward_signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Deliver ``sig`` to the command: bwrap's child (bwrap itself would just die and SIGKILL it)."""
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    for pid in children or [str(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), sig)


def run(
    image: str | ImageRef,
    command: Sequence[str] = (),
    *,
    mounts: Sequence[Mount | str] = (),
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    map_uid: int | None = None,
    map_gid: int | None = None,
    registry: str | None = None,
    insecure: bool | None = None,
    credentials: Credentials | None = None,
    cache: Path | str | None = None,
    read_only: bool = False,
    host_env: Mapping[str, str] | None = None,
) -> int:
    """Pull ``image`` if needed and run ``command`` in it; return the command's exit status.

    An empty ``command`` runs the image's entrypoint and command. ``mounts``: :class:`Mount` or
    ``SRC:DST[:ro]``. ``env``: set inside after everything else. ``host_env`` (default
    ``os.environ``) is what the container inherits and where ``STORAGE_PATH`` is looked up.
    Raises :class:`ContainerError` when the container cannot start; returns
    :data:`EXIT_COMMAND_NOT_FOUND` when the command is not in the image.
    """
    bwrap = require_tool("bwrap")
    user_mounts = [m if isinstance(m, Mount) else Mount.parse(m) for m in mounts]
    for m in user_mounts:
        if not os.path.exists(m.source):
            raise ContainerError("bad-mount", f"mount source {m.source!r} (for {m.target}) does not exist")

    def pulled() -> Path:
        return pull(image, registry=registry, insecure=insecure, credentials=credentials, cache=cache)

    with _in_use(pulled) as bundle:  # shared lock: prune() leaves an image alone while it runs
        rootfs = bundle / "rootfs"
        henv = dict(os.environ if host_env is None else host_env)
        inside = container_env(bundle, henv, env)
        process = image_config(bundle)
        argv = list(command) or [str(a) for a in process.get("args") or []]
        if not argv:
            raise ContainerError("bad-reference", f"{image}: no command given and the image defines none")
        all_mounts = launcher_mounts(henv) + deepsquare_mounts(henv) + user_mounts
        if not find_command(rootfs, argv[0], inside["PATH"], all_mounts):
            print(f"dsq-container: command-not-found: {argv[0]!r} is not in the image {image}", file=sys.stderr)
            return EXIT_COMMAND_NOT_FOUND
        wd = workdir or str(process.get("cwd") or "/")
        scratch_parent = image_cache_dir(cache) / "mnt"
        scratch_parent.mkdir(parents=True, exist_ok=True)
        args = bwrap_argv(
            scratch_parent / "merged",
            argv,
            mounts=all_mounts,
            workdir=wd,
            read_only=read_only,
            map_uid=map_uid,
            map_gid=map_gid,
            bwrap=bwrap,
        )
        if read_only and not _in_image(rootfs, wd) and not _under(wd, [m.target for m in all_mounts] + ["/tmp"]):
            raise ContainerError("bad-mount", f"work directory {wd!r} is not in the read-only image nor under a mount")
        # merged/ is only a mount point inside the child's namespace: prepare it there. The signals to forward
        # are blocked until the forwarding is in place (the child unblocks them for itself): one that arrives
        # as the command starts waits for the handler instead of killing this process with its default action.
        handlers = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, handlers)

        def child_setup() -> None:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            _mount_overlay(rootfs, scratch_parent)

        try:
            proc = _start_bwrap(args, inside, child_setup)
            forward = {s: signal.signal(s, lambda sig, _f: _forward_signal(proc, sig)) for s in handlers}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)  # pending ones now reach the handler
        try:
            code = proc.wait()
            return 128 - code if code < 0 else code  # killed by a signal: as a shell reports it
        finally:
            for s, h in forward.items():
                signal.signal(s, h)


# --- command line ----------------------------------------------------------------------------------


def run_args(
    image: str,
    command: Sequence[str] = (),
    *,
    registry: str | None = None,
    insecure: bool = False,
    mounts: Sequence[Mount | str] = (),
    env: Mapping[str, str] | None = None,
    workdir: str | None = None,
    map_uid: int | None = None,
    map_gid: int | None = None,
    read_only: bool = False,
) -> list[str]:
    """Arguments after the interpreter that make this module run ``command`` in ``image``.

    For a job script renderer: ``'"$DSQ_PYTHON" ' + shlex.join(run_args(...))``. Mounts are
    checked (:meth:`Mount.parse`) and env names validated here, before the job is sent.
    """
    args = ["-m", __name__ if __name__ != "__main__" else "dsq_chain.executors.containers", "run", "--image", image]
    if registry:
        args += ["--registry", registry]
    if insecure:
        args.append("--insecure")
    for m in mounts:
        mount = m if isinstance(m, Mount) else Mount.parse(m)
        args += ["--mount", f"{mount.source}:{mount.target}" + (":ro" if mount.read_only else "")]
    for k, v in (env or {}).items():
        if not _ENV_NAME_RE.match(k):
            raise ContainerError("bad-reference", f"env {k!r} is not a variable name")
        args += ["--env", f"{k}={v}"]
    if workdir:
        args += ["--workdir", workdir]
    if map_uid is not None:
        args += ["--map-uid", str(map_uid)]
    if map_gid is not None:
        args += ["--map-gid", str(map_gid)]
    if read_only:
        args.append("--read-only")
    return [*args, "--", *command]


def record_fault(exc: ContainerError, image: str | None, env: Mapping[str, str] | None = None) -> None:
    """Append ``exc`` as one JSON line to the file ``$DSQ_CONTAINER_FAULTS`` names (if any).

    A worker reads it to tell a job's mistake (``FAILED``) from the provider's (``PANICKED``):
    the exit status (125) is the same for both.
    """
    path = (os.environ if env is None else env).get("DSQ_CONTAINER_FAULTS")
    if not path:
        return
    line = {"reason": exc.reason, "user_fault": exc.user_fault, "image": image, "message": exc.message}
    with contextlib.suppress(OSError), open(path, "a") as f:
        f.write(json.dumps(line) + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dsq_chain.executors.containers", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="action", required=True)
    r = sub.add_parser("run", help="pull (once per digest) and run a command in an image")
    r.add_argument("--image", required=True, help="docker://host/repo:tag, repo:tag, ... (see parse_image_ref)")
    r.add_argument("--registry", help="registry of an image that names no host (DeepSquare's container.registry)")
    r.add_argument("--insecure", action="store_true", default=None, help="speak plain HTTP to the registry")
    r.add_argument("--mount", action="append", default=[], metavar="SRC:DST[:ro]")
    r.add_argument("--env", action="append", default=[], metavar="K=V")
    r.add_argument("--workdir")
    r.add_argument("--map-uid", type=int)
    r.add_argument("--map-gid", type=int)
    r.add_argument("--read-only", action="store_true", help="read-only root file system (readOnlyRootFS)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS... (default: the image's)")
    pr = sub.add_parser("prune", help="remove cached images unused for some days (never one in use)")
    pr.add_argument("--unused-days", type=float, required=True, metavar="D")
    pl = sub.add_parser("pull", help="pull an image into the cache and print its bundle folder")
    pl.add_argument("--image", required=True)
    pl.add_argument("--registry")
    pl.add_argument("--insecure", action="store_true", default=None)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.action == "prune":
            for digest in prune(args.unused_days * 86400):
                print(digest)
            return 0
        if args.action == "pull":
            print(pull(args.image, registry=args.registry, insecure=args.insecure))
            return 0
        command = list(args.command)
        if command[:1] == ["--"]:
            command = command[1:]
        env = {}
        for item in args.env:
            k, sep, v = item.partition("=")
            if not sep:
                raise ContainerError("bad-reference", f"--env {item!r}: expected K=V")
            env[k] = v
        return run(
            args.image, command, mounts=args.mount, env=env, workdir=args.workdir, map_uid=args.map_uid,
            map_gid=args.map_gid, registry=args.registry, insecure=args.insecure, read_only=args.read_only,
        )  # fmt: skip
    except ContainerError as exc:
        print(f"dsq-container: {exc}", file=sys.stderr)
        record_fault(exc, getattr(args, "image", None))
        return EXIT_CONTAINER_ERROR
    except OSError as exc:  # anything else of the machine's (disk full, permissions): still one named line
        print(f"dsq-container: run-failed: {exc}", file=sys.stderr)
        return EXIT_CONTAINER_ERROR


if __name__ == "__main__":
    sys.exit(main())
