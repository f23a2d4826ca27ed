"""Container steps for real: a docker-registry on loopback, a busybox image, skopeo, umoci and bubblewrap.

Nothing is mocked: images are pushed to and pulled from a real registry, commands run in a real
bubblewrap sandbox, on the local executor and inside a real Slurm allocation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from dsq_chain.executors import ExecState, Executor, LocalExecutor, SlurmExecutor
from dsq_chain.executors.containers import (
    EXIT_COMMAND_NOT_FOUND,
    EXIT_CONTAINER_ERROR,
    ContainerError,
    Credentials,
    ImageRef,
    Mount,
    parse_image_ref,
    prune,
    pull,
    require_tool,
    run,
    run_args,
)
from tests.executor_contract import spec, wait_final
from tests.oci_fixtures import PASSWORD, USERNAME, Registry
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

MODULE = [sys.executable, "-m", "dsq_chain.executors.containers"]


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MODULE, *args], capture_output=True, text=True, timeout=timeout, env=env or dict(os.environ), check=False
    )


# --- references (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image", "registry", "expected"),
    [
        ("ubuntu", None, ImageRef("docker.io", "library/ubuntu", "latest")),
        ("library/ubuntu:22.04", None, ImageRef("docker.io", "library/ubuntu", "22.04")),
        ("docker://ghcr.io/org/app:v1", None, ImageRef("ghcr.io", "org/app", "v1")),
        ("org/app", "registry-1.docker.io", ImageRef("registry-1.docker.io", "org/app", "latest")),
        ("busybox", "registry-1.docker.io", ImageRef("registry-1.docker.io", "library/busybox", "latest")),
        ("test/busybox:1", "127.0.0.1:5000", ImageRef("127.0.0.1:5000", "test/busybox", "1")),
        ("localhost/app", None, ImageRef("localhost", "app", "latest")),
        ("127.0.0.1:5000/app@sha256:" + "a" * 64, None, ImageRef("127.0.0.1:5000", "app", None, "sha256:" + "a" * 64)),
    ],
)
def test_parse_image_ref(image: str, registry: str | None, expected: ImageRef, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DSQ_DEFAULT_REGISTRY", raising=False)
    assert parse_image_ref(image, registry) == expected


def test_default_registry_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DSQ_DEFAULT_REGISTRY", "registry.example:5000")
    assert parse_image_ref("team/app:2") == ImageRef("registry.example:5000", "team/app", "2")
    assert parse_image_ref("team/app:2", "other.example") == ImageRef("other.example", "team/app", "2")


@pytest.mark.parametrize(
    ("image", "words"),
    [
        ("", "empty"),
        ("/opt/images/app.sqsh", "docker://"),
        ("Upper/Case", "lowercase"),
        ("app@sha256:1234", "digest"),
        ("app:bad tag", "tag"),
    ],
)
def test_bad_references_are_named(image: str, words: str) -> None:
    with pytest.raises(ContainerError) as info:
        parse_image_ref(image)
    assert info.value.reason == "bad-reference"
    assert words in str(info.value)


def test_mount_parsing() -> None:
    assert Mount.parse("/a:/b") == Mount("/a", "/b", False)
    assert Mount.parse("/a:/b:ro") == Mount("/a", "/b", True)
    for bad in ("/a", "/a:b", "/a:/b:rx", ":/b"):
        with pytest.raises(ContainerError, match="bad-mount"):
            Mount.parse(bad)


def test_run_args_round_trip_through_the_cli_parser() -> None:
    from dsq_chain.executors.containers import _parser

    args = run_args(
        "lib/app:1", ["/bin/sh", "-c", "echo $A"], registry="r.example", insecure=True,
        mounts=["/h:/c:ro", Mount("/x", "/y")], env={"A": "b=c"}, workdir="/c", map_uid=0, map_gid=5, read_only=True,
    )  # fmt: skip
    assert args[:2] == ["-m", "dsq_chain.executors.containers"]
    ns = _parser().parse_args(args[2:])
    assert (ns.image, ns.registry, ns.insecure, ns.mount, ns.env) == (
        "lib/app:1",
        "r.example",
        True,
        ["/h:/c:ro", "/x:/y"],
        ["A=b=c"],
    )
    assert (ns.workdir, ns.map_uid, ns.map_gid, ns.read_only) == ("/c", 0, 5, True)
    assert ns.command == ["--", "/bin/sh", "-c", "echo $A"]
    with pytest.raises(ContainerError, match="bad-mount"):
        run_args("app", mounts=["/a:relative"])


def test_missing_tool_names_the_debian_package() -> None:
    with pytest.raises(ContainerError) as info:
        require_tool("dsq-no-such-tool")
    assert info.value.reason == "tool-missing"
    assert "apt-get install" in info.value.message


def test_credentials_never_show_in_repr() -> None:
    assert "s3cret" not in repr(Credentials("alice", "s3cret"))


# --- pulling -------------------------------------------------------------------------------------


def test_pull_once_per_digest(oci_registry: Registry, image_cache: Path) -> None:
    image = oci_registry.images["busybox"]
    before = oci_registry.blob_downloads()
    first = cli("run", "--image", image, "--", "/bin/true")
    assert first.returncode == 0, first.stderr
    pulled = oci_registry.blob_downloads() - before
    assert pulled >= 2  # config + layer at least
    bundles = list((image_cache / "images").iterdir())
    assert len(bundles) == 1
    record = json.loads((bundles[0] / "image.json").read_text())
    assert record["digest"] == "sha256:" + bundles[0].name
    stat = (bundles[0] / "rootfs").stat()

    second = cli("run", "--image", image, "--", "/bin/true")
    assert second.returncode == 0, second.stderr
    assert oci_registry.blob_downloads() - before == pulled, "the second run downloaded blobs again"
    assert list((image_cache / "images").iterdir()) == bundles
    assert (bundles[0] / "rootfs").stat().st_ino == stat.st_ino
    assert json.loads((bundles[0] / "image.json").read_text()) == record
    assert len((image_cache / "pulls.log").read_text().splitlines()) == 1
    # pinned by digest: served from the cache without asking the registry for anything
    assert pull(f"{image.split(':1')[0]}@{record['digest']}") == bundles[0]


def test_prune_removes_unused_images_only(oci_registry: Registry, image_cache: Path) -> None:
    image = oci_registry.images["busybox"]
    assert cli("run", "--image", image, "--", "/bin/true").returncode == 0
    assert prune(3600) == [], "an image used a moment ago was pruned"
    running = subprocess.Popen(
        [*MODULE, "run", "--image", image, "--", "/bin/sh", "-c", "echo ready; read line"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert running.stdout is not None and running.stdout.readline() == "ready\n"
        assert prune(0) == [], "an image in use was pruned"
        running.communicate("done\n", timeout=30)
    finally:
        running.kill()
    assert running.returncode == 0
    (bundle,) = (image_cache / "images").iterdir()
    proc = cli("prune", "--unused-days", "0")
    assert (proc.returncode, proc.stdout) == (0, f"sha256:{bundle.name}\n"), proc.stderr
    assert not list((image_cache / "images").iterdir())
    assert not list((image_cache / "tmp").iterdir())
    assert cli("run", "--image", image, "--", "/bin/true").returncode == 0  # pulled again
    assert len((image_cache / "pulls.log").read_text().splitlines()) == 2


def test_concurrent_pulls_of_one_image_pull_once(oci_registry: Registry, image_cache: Path) -> None:
    procs = [
        subprocess.Popen(
            [*MODULE, "run", "--image", oci_registry.images["busybox"], "--", "/bin/echo", f"run {i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], outs
    assert sorted(o[0].strip() for o in outs) == [f"run {i}" for i in range(4)]
    assert len(list((image_cache / "images").iterdir())) == 1
    assert len((image_cache / "pulls.log").read_text().splitlines()) == 1
    assert not list((image_cache / "tmp").iterdir()), "a pull left its work folder behind"


def test_concurrent_first_runs_that_wait_for_each_other(
    oci_registry: Registry, image_cache: Path, tmp_path: Path
) -> None:
    """Two ranks of one step on a fresh cache: one pulls, the other waits for that pull, and each
    container then waits for the other (as MPI ranks do). A run must not hold the pull lock."""
    script = 'touch /s/"$ME"; i=0; while [ ! -f /s/"$OTHER" ]; do i=$((i+1)); [ $i -gt 300 ] && exit 9; sleep 0.1; done'
    procs = [
        subprocess.Popen(
            [
                *MODULE,
                "run",
                "--image",
                oci_registry.images["busybox"],
                "--mount",
                f"{tmp_path}:/s",
                "--env",
                f"ME={me}",
                "--env",
                f"OTHER={other}",
                "--",
                "/bin/sh",
                "-c",
                script,
            ],
            stderr=subprocess.PIPE,
            text=True,
        )
        for me, other in (("a", "b"), ("b", "a"))
    ]
    errs = [p.communicate(timeout=90)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert len((image_cache / "pulls.log").read_text().splitlines()) == 1


def test_missing_image_is_125_with_a_reason(oci_registry: Registry, image_cache: Path) -> None:
    proc = cli("run", "--image", f"{oci_registry.host}/test/nope:1", "--", "/bin/true")
    assert proc.returncode == EXIT_CONTAINER_ERROR
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dsq-container: image-not-found: "), proc.stderr
    assert f"{oci_registry.host}/test/nope:1" in lines[0]


def test_faults_are_recorded_for_the_worker(oci_registry: Registry, image_cache: Path, tmp_path: Path) -> None:
    faults = tmp_path / "faults.jsonl"
    env = dict(os.environ, DSQ_CONTAINER_FAULTS=str(faults))
    assert cli("run", "--image", f"{oci_registry.host}/test/nope:1", "--", "true", env=env).returncode == 125
    assert (
        cli("run", "--image", oci_registry.images["busybox"], "--", "true", env=dict(env, PATH="/nowhere")).returncode
        == 125
    )
    assert (
        cli("run", "--image", oci_registry.images["busybox"], "--", "/bin/sh", "-c", "exit 125", env=env).returncode
        == 125
    )
    records = [json.loads(line) for line in faults.read_text().splitlines()]
    assert [(r["reason"], r["user_fault"]) for r in records] == [("image-not-found", True), ("tool-missing", False)]
    assert records[0]["image"] == f"{oci_registry.host}/test/nope:1"


def test_unreachable_registry_is_125_with_a_reason(image_cache: Path, container_tools: None) -> None:
    from tests.slurm_cluster import free_port

    proc = cli("run", "--image", f"127.0.0.1:{free_port()}/test/busybox:1", "--", "/bin/true")
    assert proc.returncode == EXIT_CONTAINER_ERROR
    assert proc.stderr.startswith("dsq-container: registry-unreachable: "), proc.stderr


def test_credentials(oci_auth_registry: Registry, image_cache: Path) -> None:
    image = oci_auth_registry.images["busybox"]
    auth_files = set(Path(tempfile.gettempdir()).glob("dsq-auth-*.json"))
    anonymous = cli("run", "--image", image, "--", "/bin/true")
    assert anonymous.returncode == EXIT_CONTAINER_ERROR
    assert anonymous.stderr.startswith("dsq-container: registry-auth: "), anonymous.stderr

    env = dict(os.environ, DSQ_REGISTRY_USERNAME=USERNAME, DSQ_REGISTRY_PASSWORD="wrong")
    wrong = cli("run", "--image", image, "--", "/bin/true", env=env)
    assert wrong.returncode == EXIT_CONTAINER_ERROR
    assert wrong.stderr.startswith("dsq-container: registry-auth: "), wrong.stderr
    assert "wrong" not in wrong.stderr

    env["DSQ_REGISTRY_PASSWORD"] = PASSWORD
    ok = cli("run", "--image", image, "--", "/bin/sh", "-c", "env", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "DSQ_REGISTRY" not in ok.stdout, "registry credentials leaked into the container"
    assert set(Path(tempfile.gettempdir()).glob("dsq-auth-*.json")) <= auth_files, "an auth file was left behind"


# --- running -------------------------------------------------------------------------------------


def test_mounts_env_and_workdir_inside(oci_registry: Registry, image_cache: Path, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "in.txt").write_text("from the host\n")
    script = (
        'echo "env=$GREETING image=$IMAGE_VAR pwd=$(pwd)"; cat /ro/in.txt; echo out > /rw/out.txt;'
        " if echo x > /ro/x 2>/dev/null; then echo ro-writable; fi; echo scratch > /etc/new; cat /etc/new"
    )
    proc = cli(
        "run", "--image", oci_registry.images["busybox"], "--mount", f"{rw}:/rw", "--mount", f"{ro}:/ro:ro",
        "--env", "GREETING=hello world", "--workdir", "/rw/sub", "--", "/bin/sh", "-c", script,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "env=hello world image=from-image pwd=/rw/sub",
        "from the host",
        "scratch",
    ]
    assert (rw / "out.txt").read_text() == "out\n"
    assert (rw / "sub").is_dir()  # --workdir is created when missing, like DeepSquare's enroot hook
    assert not (ro / "x").exists()
    rootfs = next((image_cache / "images").iterdir()) / "rootfs"
    assert not (rootfs / "etc" / "new").exists(), "a write inside the container changed the cached image"


def test_image_defaults_command_and_workdir(oci_registry: Registry, image_cache: Path) -> None:
    proc = cli("run", "--image", oci_registry.images["busybox"])
    assert (proc.returncode, proc.stdout) == (0, "default command\n"), proc.stderr
    pwd = cli("run", "--image", oci_registry.images["busybox"], "--", "pwd")
    assert pwd.stdout == "/etc\n"


def test_deepsquare_folders_appear_as_in_deepsquare(oci_registry: Registry, image_cache: Path, tmp_path: Path) -> None:
    storage = tmp_path / "job.42"
    for sub in ("input", "output", "tmp", "world-tmp", "disk/tmp", "disk/world-tmp"):
        (storage / sub).mkdir(parents=True)
    shared_tmp = tmp_path / "persistent"
    shared_tmp.mkdir()
    (storage / "input" / "data.txt").write_text("input data\n")
    (storage / "env").write_text("")
    env = dict(
        os.environ,
        STORAGE_PATH=str(storage),
        DEEPSQUARE_INPUT=str(storage / "input"),
        DEEPSQUARE_OUTPUT=str(storage / "output"),
        DEEPSQUARE_ENV=str(storage / "env"),
        DEEPSQUARE_TMP=str(shared_tmp),
        DEEPSQUARE_SHARED_TMP=str(shared_tmp),
    )
    script = (
        'echo "$STORAGE_PATH $DEEPSQUARE_INPUT $DEEPSQUARE_OUTPUT $DEEPSQUARE_ENV $DEEPSQUARE_TMP";'
        ' cat "$DEEPSQUARE_INPUT/data.txt"; echo result > "$DEEPSQUARE_OUTPUT/result.txt";'
        ' echo FOO=bar >> "$DEEPSQUARE_ENV"; echo cached > "$DEEPSQUARE_SHARED_TMP/c"'
    )
    proc = cli("run", "--image", oci_registry.images["busybox"], "--", "/bin/sh", "-c", script, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "/deepsquare /deepsquare/input /deepsquare/output /deepsquare/env /deepsquare/tmp",
        "input data",
    ]
    assert (storage / "output" / "result.txt").read_text() == "result\n"
    assert (storage / "env").read_text() == "FOO=bar\n"
    assert (shared_tmp / "c").read_text() == "cached\n"


@pytest.mark.parametrize("code", [0, 1, 7, 42])
def test_exit_code_is_the_commands(oci_registry: Registry, image_cache: Path, code: int) -> None:
    proc = cli("run", "--image", oci_registry.images["busybox"], "--", "/bin/sh", "-c", f"exit {code}")
    assert proc.returncode == code, proc.stderr


def test_sigterm_reaches_the_command(oci_registry: Registry, image_cache: Path) -> None:
    script = 'trap "echo got TERM; exit 7" TERM; echo ready; sleep 20 >/dev/null 2>&1 & wait'
    proc = subprocess.Popen(
        [*MODULE, "run", "--image", oci_registry.images["busybox"], "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert (proc.returncode, out) == (7, "got TERM\n"), err


def test_command_not_in_image_is_127(oci_registry: Registry, image_cache: Path) -> None:
    proc = cli("run", "--image", oci_registry.images["busybox"], "--", "python3", "-V")
    assert proc.returncode == EXIT_COMMAND_NOT_FOUND
    assert "command-not-found" in proc.stderr and "python3" in proc.stderr


def test_map_uid_gid(oci_registry: Registry, image_cache: Path) -> None:
    proc = cli(
        "run", "--image", oci_registry.images["busybox"], "--map-uid", "1000", "--map-gid", "100",
        "--", "/bin/sh", "-c", "echo $(id -u) $(id -g)",
    )  # fmt: skip
    assert (proc.returncode, proc.stdout) == (0, "1000 100\n"), proc.stderr


def test_read_only_root(oci_registry: Registry, image_cache: Path) -> None:
    proc = cli(
        "run", "--read-only", "--image", oci_registry.images["busybox"], "--workdir", "/tmp/w", "--",
        "/bin/sh", "-c", "echo t > /tmp/w/t && cat /tmp/w/t; touch /etc/new || exit 9",
    )  # fmt: skip
    assert proc.returncode == 9, proc.stderr
    assert proc.stdout == "t\n"
    assert "Read-only file system" in proc.stderr
    missing = cli("run", "--read-only", "--image", oci_registry.images["busybox"], "--workdir", "/nope", "--", "true")
    assert missing.returncode == EXIT_CONTAINER_ERROR
    assert missing.stderr.startswith("dsq-container: bad-mount: work directory '/nope'"), missing.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a command as the user nobody")
def test_runs_as_an_unprivileged_user(oci_registry: Registry) -> None:
    """Not root (a local executor's --job-user): the overlay root is mounted in a user namespace."""
    import pwd
    import shutil

    if not Path("/usr/bin/python3").exists():
        pytest.skip("no /usr/bin/python3 for the user nobody (the project's venv is not readable by it)")
    pwd.getpwnam("nobody")
    shared = Path(tempfile.mkdtemp(prefix="dsq-nobody-"))
    try:
        shared.chmod(0o777)
        package = Path(__file__).resolve().parents[1] / "dsq_chain"
        shutil.copytree(package, shared / "src" / "dsq_chain", ignore=shutil.ignore_patterns("__pycache__"))
        for p in [shared, *shared.rglob("*")]:
            p.chmod(0o777 if p.is_dir() else 0o644)
        env = {"PATH": os.environ["PATH"], "HOME": str(shared), "PYTHONPATH": str(shared / "src"),
               "DSQ_IMAGE_CACHE": str(shared / "cache")}  # fmt: skip
        proc = subprocess.run(
            ["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-m", "dsq_chain.executors.containers", "run",
             "--image", oci_registry.images["busybox"], "--", "/bin/sh", "-c", "id -u; echo x > /etc/x && cat /etc/x"],
            capture_output=True, text=True, timeout=120, env=env, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == [str(pwd.getpwnam("nobody").pw_uid), "x"]
    finally:
        shutil.rmtree(shared, ignore_errors=True)


def test_unusable_cache_is_named(oci_registry: Registry, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    env = dict(os.environ, DSQ_IMAGE_CACHE=str(tmp_path / "file" / "cache"))
    proc = cli("run", "--image", oci_registry.images["busybox"], "--", "/bin/true", env=env)
    assert proc.returncode == EXIT_CONTAINER_ERROR
    assert proc.stderr.startswith("dsq-container: cache-error: image cache "), proc.stderr
    assert len(proc.stderr.splitlines()) == 1


def test_missing_bubblewrap_is_named(oci_registry: Registry, image_cache: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PATH=str(tmp_path))  # no bwrap, skopeo, umoci on this PATH
    proc = cli("run", "--image", oci_registry.images["busybox"], "--", "/bin/true", env=env)
    assert proc.returncode == EXIT_CONTAINER_ERROR
    assert proc.stderr.startswith("dsq-container: tool-missing: bwrap is not installed"), proc.stderr
    assert "bubblewrap" in proc.stderr


def test_python_api(oci_registry: Registry, image_cache: Path, tmp_path: Path) -> None:
    bundle = pull(oci_registry.images["busybox"])
    assert (bundle / "rootfs" / "bin" / "busybox").is_file()
    out = tmp_path / "out"
    out.mkdir()
    code = run(
        oci_registry.images["busybox"], ["/bin/sh", "-c", "echo $X > /o/x; exit 3"],
        mounts=[f"{out}:/o"], env={"X": "api"},
    )  # fmt: skip
    assert code == 3
    assert (out / "x").read_text() == "api\n"


# --- in the executors ----------------------------------------------------------------------------

STEP = """set -e
"$DSQ_PYTHON" -m dsq_chain.executors.containers run --image "$IMAGE" --mount "$PWD:/work" --workdir /work \\
    --env STEP=one -- /bin/sh -c 'echo "step $STEP in $(pwd)" > result.txt; cat /etc/image-release'
cat result.txt
"$DSQ_PYTHON" -m dsq_chain.executors.containers run --image "$IMAGE" -- /bin/sh -c 'exit 5' || echo "exit $?"
"""


def _run_step(ex: Executor, script: str, registry: Registry, cache: Path) -> None:
    """Submit ``script`` with the image and cache in its environment; it must end COMPLETED with STEP's output."""
    env = {"DSQ_PYTHON": sys.executable, "IMAGE": registry.images["busybox"], "DSQ_IMAGE_CACHE": str(cache)}
    exec_id = ex.submit(spec(script, env=env))
    st = wait_final(ex, exec_id, 180)
    stdout, stderr = ex.logs(exec_id)
    assert st.state is ExecState.COMPLETED, stderr.read_text() if stderr.exists() else st
    lines = [ln for ln in stdout.read_text().splitlines() if ln]
    assert lines == ["dsq-chain test image", "step one in /work", "exit 5"]


def test_container_step_under_the_local_executor(oci_registry: Registry, image_cache: Path, tmp_path: Path) -> None:
    _run_step(LocalExecutor(tmp_path / "local"), STEP, oci_registry, image_cache)


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")
def test_container_step_with_srun(oci_registry: Registry, image_cache: Path, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    proc = slurm_cluster.command(
        "srun", "-n", "1", *MODULE, "run", "--image", oci_registry.images["busybox"], "--",
        "/bin/sh", "-c", 'echo "task $SLURM_PROCID of $SLURM_NTASKS"; exit 3',
        timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.strip() == "task 0 of 1"


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")
def test_container_step_in_a_slurm_batch_job(
    oci_registry: Registry,
    image_cache: Path,
    slurm_cluster: SlurmCluster,  # noqa: F811
    tmp_path: Path,
) -> None:
    script = STEP.replace('"$DSQ_PYTHON" -m', 'srun -n 1 "$DSQ_PYTHON" -m')
    _run_step(SlurmExecutor(tmp_path / "slurm", slurm_conf=slurm_cluster.conf), script, oci_registry, image_cache)
