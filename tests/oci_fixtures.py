"""Real OCI registries and a test image, with no download: fixtures for the container tests.

``tests/conftest.py`` imports the fixtures, so every test module can use them.

* ``container_tools`` installs Debian's ``skopeo``, ``umoci``, ``bubblewrap``,
  ``docker-registry``, ``busybox-static`` and ``apache2-utils`` (``htpasswd``) with apt-get when
  missing (skips, saying why, only without apt-get or root).
* ``busybox_image`` builds an OCI image layout from ``/bin/busybox`` (every applet a symlink in
  ``/bin``) with ``umoci init/new/insert/config``: nothing is downloaded.
* ``oci_registry`` starts ``docker-registry serve`` (the CNCF distribution server) on
  ``127.0.0.1`` with a free port and filesystem storage in a temp folder, and pushes the image
  with ``skopeo copy`` as ``test/busybox:1``. ``oci_auth_registry`` is the same behind basic
  auth (``htpasswd``, user ``alice``, password ``s3cret``).

:meth:`Registry.blob_downloads` counts the blob GETs in the registry's access log: a test can
see how often images really were pulled.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.apt import AptUnavailable, ensure_packages
from tests.processes import stop_process
from tests.slurm_cluster import free_port

APT_PACKAGES = ("skopeo", "umoci", "bubblewrap", "docker-registry", "busybox-static", "apache2-utils")
TOOLS = ("skopeo", "umoci", "bwrap", "docker-registry", "htpasswd")
BUSYBOX = Path("/bin/busybox")
USERNAME, PASSWORD = "alice", "s3cret"
IMAGE = "test/busybox"


def _busybox_static() -> bool:
    if not BUSYBOX.is_file():
        return False
    proc = subprocess.run(["ldd", str(BUSYBOX)], capture_output=True, text=True, check=False)
    return proc.returncode != 0 or "not a dynamic executable" in proc.stdout + proc.stderr


def tools_present() -> bool:
    return all(shutil.which(t) for t in TOOLS) and _busybox_static()


def ensure_container_tools() -> None:
    """Install what the container tests need (raises :class:`AptUnavailable` when impossible)."""
    ensure_packages(APT_PACKAGES, tools_present)


def _run(*cmd: str, cwd: Path | None = None) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def build_busybox_image(dest: Path, tag: str = "busybox") -> str:
    """An OCI layout at ``dest`` holding ``tag``: busybox as ``/bin``, ``PATH=/bin``, cwd ``/``.

    Returns the ``oci:`` reference skopeo reads (``oci:DEST:TAG``).
    """
    rootfs = dest.parent / f"{dest.name}-rootfs"
    (rootfs / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    for applet in _run(str(BUSYBOX), "--list").split():
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "etc").mkdir()
    (rootfs / "etc" / "image-release").write_text("dsq-chain test image\n")
    image = f"{dest}:{tag}"
    _run("umoci", "init", "--layout", str(dest))
    _run("umoci", "new", "--image", image)
    _run("umoci", "insert", "--rootless", "--image", image, str(rootfs), "/")
    _run(
        "umoci", "config", "--image", image, "--config.env", "PATH=/bin", "--config.env", "IMAGE_VAR=from-image",
        "--config.cmd", "/bin/sh", "--config.cmd", "-c", "--config.cmd", "echo default command",
        "--config.workingdir", "/etc",
    )  # fmt: skip
    shutil.rmtree(rootfs)
    return f"oci:{image}"


@dataclass
class Registry:
    """A running ``docker-registry`` on loopback; ``host`` is ``127.0.0.1:PORT``."""

    host: str
    dir: Path
    proc: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None
    images: dict[str, str] = field(default_factory=dict)

    @property
    def log(self) -> Path:
        return self.dir / "registry.log"

    def push(self, oci_ref: str, name: str) -> str:
        """Copy ``oci_ref`` into this registry as ``name`` (``repo:tag``); return ``host/name``."""
        creds = ["--dest-creds", f"{self.username}:{self.password}"] if self.username else []
        _run("skopeo", "copy", "--quiet", "--dest-tls-verify=false", *creds, oci_ref, f"docker://{self.host}/{name}")
        return f"{self.host}/{name}"

    def blob_downloads(self) -> int:
        """Blob GETs answered so far (layers and configs: what a real pull downloads)."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return len(re.findall(r'"GET /v2/[^ ]+/blobs/sha256:[0-9a-f]+ HTTP/[0-9.]+" (?:200|307)', text))

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def start_registry(dir: Path, *, auth: tuple[str, str] | None = None, timeout_s: float = 30) -> Registry:
    """Start ``docker-registry serve`` with storage in ``dir`` (basic auth when ``auth`` is given)."""
    dir.mkdir(parents=True, exist_ok=True)
    host = f"127.0.0.1:{free_port()}"
    config = f"""version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: {dir / "storage"}
  delete:
    enabled: true
http:
  addr: {host}
  secret: dsq-chain-tests
"""
    if auth:
        (dir / "htpasswd").write_text(_run("htpasswd", "-Bbn", *auth))
        config += f"auth:\n  htpasswd:\n    realm: dsq-tests\n    path: {dir / 'htpasswd'}\n"
    (dir / "config.yml").write_text(config)
    with open(dir / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            ["docker-registry", "serve", str(dir / "config.yml")],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    registry = Registry(host, dir, proc, *(auth or (None, None)))
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited with {proc.returncode}:\n{registry.log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=2).close()
            return registry
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                return registry
        except OSError:
            pass
        if time.monotonic() > deadline:
            registry.stop()
            raise RuntimeError(f"docker-registry did not answer on {host} within {timeout_s:g} s")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def container_tools() -> None:
    try:
        ensure_container_tools()
    except AptUnavailable as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def busybox_image(container_tools: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``oci:DIR:busybox``, built once per session."""
    return build_busybox_image(tmp_path_factory.mktemp("oci") / "layout")


def _registry(tmp_path_factory: pytest.TempPathFactory, image: str, auth: tuple[str, str] | None) -> Iterator[Registry]:
    registry = start_registry(tmp_path_factory.mktemp("registry"), auth=auth)
    try:
        registry.images["busybox"] = registry.push(image, f"{IMAGE}:1")
        yield registry
    finally:
        registry.stop()


@pytest.fixture(scope="session")
def oci_registry(busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """An open registry holding ``test/busybox:1`` (``registry.images["busybox"]``)."""
    yield from _registry(tmp_path_factory, busybox_image, None)


@pytest.fixture(scope="session")
def oci_auth_registry(busybox_image: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """A registry behind basic auth (``alice`` / ``s3cret``) holding ``test/busybox:1``."""
    yield from _registry(tmp_path_factory, busybox_image, (USERNAME, PASSWORD))


@pytest.fixture
def image_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty image cache for this test (``DSQ_IMAGE_CACHE`` points at it)."""
    cache = tmp_path / "image-cache"
    monkeypatch.setenv("DSQ_IMAGE_CACHE", str(cache))
    monkeypatch.delenv("DSQ_REGISTRY_USERNAME", raising=False)
    monkeypatch.delenv("DSQ_REGISTRY_PASSWORD", raising=False)
    return cache


__all__ = [
    "Registry",
    "build_busybox_image",
    "busybox_image",
    "container_tools",
    "ensure_container_tools",
    "image_cache",
    "oci_auth_registry",
    "oci_registry",
    "start_registry",
]
