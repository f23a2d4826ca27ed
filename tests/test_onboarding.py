"""Provider onboarding pieces: the hardware self-check, keystores, the idempotent registration, the unit and
environment files, the worker's heartbeat and the doctor; on a real Anvil and a real Slurm."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dsq_chain.errors import InputError
from dsq_chain.executors import LocalExecutor, SlurmExecutor
from dsq_chain.executors.hardware import (
    cpu_model,
    detect_engine,
    gres_gpus,
    parse_gpu_line,
    run_benchmarks,
    scontrol_nodes,
    self_check,
    standard_labels,
    verify_offer,
)
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import AnvilNode
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.services.doctor import diagnose
from dsq_chain.services.heartbeat import read_heartbeat
from dsq_chain.services.onboarding import (
    DEFAULT_PRICES,
    Offer,
    chain_labels,
    create_keystore,
    import_keystore,
    keep_close_measurements,
    plan_offer,
    propose_prices,
    read_env_file,
    sync_registration,
    write_service_files,
)
from dsq_chain.services.worker import ProviderWorker
from dsq_chain.types import Prices, Resources
from tests.grid import CPU_PRICES, GPU_PRICES, Grid
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)

DSQ = Path(sys.executable).parent / "dsq"
NEW_KEY = 13  # an Anvil dev account no other test registers


# ------------------------------------------------------------------------------------------ detection
def test_cpu_model_is_a_short_label() -> None:
    assert cpu_model("model name\t: Intel(R) Xeon(R) Gold 6248 CPU @ 2.50GHz\n") == "Intel Xeon Gold 6248"
    assert cpu_model("model name\t: AMD EPYC 7763 64-Core Processor\n") == "AMD EPYC 7763"
    long = cpu_model("model name\t: " + "Very Long Vendor Name " * 5 + "\n")
    assert 0 < len(long.encode()) <= 32
    assert cpu_model() and len(cpu_model().encode()) <= 32  # this machine's


def test_gpu_lines_of_nvidia_smi() -> None:
    gpu = parse_gpu_line("NVIDIA A100-SXM4-80GB, 81920")
    assert (gpu.vendor, gpu.model, gpu.mem_mb) == ("nvidia", "a100", 81920)  # as Akash names models
    models = {"Tesla V100-PCIE-16GB": "v100", "NVIDIA GeForce RTX 3090": "rtx3090", "NVIDIA RTX A6000": "rtxa6000",
              "NVIDIA H100 80GB HBM3": "h100", "Tesla T4": "t4", "NVIDIA A100 80GB PCIe": "a100", "NVIDIA L40S": "l40s"}
    assert {name: parse_gpu_line(f"{name}, 1").model for name in models} == models
    nodes = scontrol_nodes("NodeName=g1 CPUTot=64 RealMemory=512000 Gres=gpu:a100:4(S:0-1) State=IDLE\n"
                           "NodeName=g2 CPUTot=64 RealMemory=512000 Gres=gpu:MI250:2,gpu:h100:1 State=IDLE\n"
                           "NodeName=c1 CPUTot=8 RealMemory=1000 Gres=(null) State=IDLE\n")
    assert [(g.vendor, g.model) for g in gres_gpus(nodes)] == [("nvidia", "a100")] * 4 + [("amd", "mi250")] * 2 + [
        ("nvidia", "h100")]


def test_benchmarks_take_seconds_and_clean_up(tmp_path: Path) -> None:
    b = run_benchmarks(tmp_path, budget_s=0.1)
    assert b.cpu_sha256_mbps > 0 and b.mem_copy_mbps > 0 and b.disk_write_mbps > 0
    assert b.seconds < 10
    assert list(tmp_path.iterdir()) == []  # the disk probe is gone


def test_local_self_check_and_its_labels(tmp_path: Path) -> None:
    ex = LocalExecutor(tmp_path / "ex")
    report = self_check(ex, tmp_path / "ex", budget_s=0.1)
    assert report.capacity == ex.capacity() and report.engine == "local"
    assert report.disk_free_gb == shutil.disk_usage(tmp_path).free // 10**9
    labels = standard_labels(report, "eu-test")
    assert labels["region"] == "eu-test" and labels["storage.persistent.gb"] == str(report.disk_free_gb)
    assert labels["cpu.model"] == cpu_model()
    assert ("gpu.model" in labels) == bool(report.gpus)
    # an offer above the measurement is refused, naming each over-claim with the measured figure
    more = Resources(report.capacity.cpus + 1, 0, report.capacity.mem_mb)
    problems = verify_offer(more, {"storage.persistent.gb": "999999", "gpu.model": "H100"}, report)
    assert any(p.startswith("cpus: offers") for p in problems)
    assert any(f"measured {report.disk_free_gb}" in p for p in problems)
    assert (not report.gpus) == any("gpu.model=H100: the self-check found none" in p for p in problems)
    with pytest.raises(InputError, match="refusing to offer more than the self-check measured"):
        plan_offer(report, CPU_PRICES, hardware=more)
    offer = plan_offer(report, CPU_PRICES, region="eu-test", extra_labels={"zone": "a"})
    assert offer.hardware == report.capacity and offer.labels["zone"] == "a"


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")
def test_slurm_detection_and_self_check_in_srun(tmp_path: Path, slurm_cluster: SlurmCluster) -> None:  # noqa: F811
    engine, why = detect_engine(slurm_cluster.conf)
    assert engine == "slurm" and slurm_cluster.node in why
    assert detect_engine(tmp_path / "no-such.conf")[0] == "local"
    nodes = scontrol_nodes(slurm_cluster.command("scontrol", "show", "nodes", "-o").stdout)
    assert [(n.name, n.cpus, n.mem_mb) for n in nodes] == [(slurm_cluster.node, slurm_cluster.cpus,
                                                            slurm_cluster.mem_mb)]
    ex = SlurmExecutor(tmp_path / "ex", slurm_conf=slurm_cluster.conf)
    report = self_check(ex, tmp_path / "ex", budget_s=0.1)
    assert report.engine == "slurm" and report.benchmarks.where == "srun"  # measured on a compute node
    assert report.capacity == Resources(slurm_cluster.cpus, 0, slurm_cluster.mem_mb)
    assert report.nodes[0].name == slurm_cluster.node


# ------------------------------------------------------------------------------------------ keys and files
def test_keystore_create_import_and_refusals(tmp_path: Path, keys: list[str]) -> None:
    ks = tmp_path / "k" / "keystore.json"
    address = create_keystore(ks, "pw", keys[NEW_KEY])
    assert ks.stat().st_mode & 0o777 == 0o600
    assert import_keystore(ks, "pw") == (address, keys[NEW_KEY])
    with pytest.raises(InputError, match="wrong password"):
        import_keystore(ks, "nope")
    with pytest.raises(InputError, match="already exists"):
        create_keystore(ks, "pw")
    fresh = create_keystore(tmp_path / "new.json", "pw")
    assert fresh != address and import_keystore(tmp_path / "new.json", "pw")[0] == fresh
    with pytest.raises(InputError, match="not a private key"):
        create_keystore(tmp_path / "bad.json", "pw", "0x1234")


def test_unit_and_environment_file(tmp_path: Path) -> None:
    files = write_service_files(tmp_path / "p", address="0xabc", config={"rpc_url": "http://127.0.0.1:1"},
                                env={"DSQ_KEYSTORE_PASSWORD": 'p"a ss$word', "DSQ_CONFIG": str(tmp_path / "p c")},
                                worker_args=["--executor", "local", "--state-dir", str(tmp_path / "with space")],
                                state_dir=tmp_path, user="nobody")
    assert files.env_file.stat().st_mode & 0o777 == 0o600
    env = read_env_file(files.env_file)
    assert env == {"DSQ_KEYSTORE_PASSWORD": 'p"a ss$word', "DSQ_CONFIG": str(tmp_path / "p c")}
    unit = files.unit.read_text()
    assert "User=nobody" in unit and f"EnvironmentFile={files.env_file}" in unit
    assert f'"{tmp_path / "with space"}"' in unit
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: the unit was not verified")
    proc = subprocess.run(["systemd-analyze", "verify", str(files.unit)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------ registration
def test_proposed_prices_are_the_median_of_approved_providers(grid: Grid) -> None:
    assert propose_prices([]) == DEFAULT_PRICES
    provs = grid.user.providers()  # cpu, spare (CPU_PRICES) and gpu (GPU_PRICES) approved; pending is not
    assert propose_prices(provs) == CPU_PRICES
    assert GPU_PRICES != CPU_PRICES


def test_registration_is_idempotent_and_sends_only_what_differs(grid: Grid, anvil: AnvilNode,
                                                                keys: list[str]) -> None:
    client = ProviderClient(Chain(anvil.rpc_url).wallet(keys[NEW_KEY]), grid.deployment)
    offer = Offer(Resources(2, 0, 4096), Prices.from_units(1000, 0, 10), {"region": "eu-test",
                                                                         "storage.persistent.gb": "50",
                                                                "bench.cpu.sha256.mbps": "500"})
    assert sync_registration(client, offer) == ["register"]
    block = grid.chain.block_number()
    assert sync_registration(client, offer) == []
    assert grid.chain.block_number() == block  # nothing sent
    assert chain_labels(client) == offer.labels
    # noise in a benchmark or a little more free disk keeps the figures on chain; a real change is sent alone
    noisy = Offer(offer.hardware, offer.prices, {**offer.labels, "bench.cpu.sha256.mbps": "900",
                                                 "storage.persistent.gb": "52"})
    assert sync_registration(client, noisy) == []
    assert grid.chain.block_number() == block
    assert sync_registration(client, Offer(offer.hardware, Prices.from_units(2000, 0, 10), offer.labels)) == ["prices"]
    changed = Offer(Resources(1, 0, 4096), Prices.from_units(2000, 0, 10),
                    {"region": "eu-north", "bench.cpu.sha256.mbps": "500"})
    assert sync_registration(client, changed) == ["hardware", "labels"]
    info = client.info()
    assert info.total == Resources(1, 0, 4096) and info.prices == Prices.from_units(2000, 0, 10)
    assert chain_labels(client) == changed.labels  # storage.persistent.gb was removed
    grid.admin.ban(client.address)
    with pytest.raises(InputError, match="banned"):
        sync_registration(client, offer)


def test_keep_close_measurements_keeps_noise_and_sends_real_changes() -> None:
    offer = Offer(Resources(1, 0, 1), Prices.from_units(1),
                  {"cpu.model": "epyc", "storage.persistent.gb": "40", "bench.mem.copy.mbps": "100"})
    # Same CPU: the published benchmark stays, even 10x away (one busy run differs from the next by that much).
    kept = keep_close_measurements(offer, {"cpu.model": "epyc", "bench.mem.copy.mbps": "1000"})
    assert kept.labels["bench.mem.copy.mbps"] == "1000"
    # Another CPU, or --remeasure: the fresh figure is sent.
    assert keep_close_measurements(offer, {"cpu.model": "xeon", "bench.mem.copy.mbps": "1000"}).labels == offer.labels
    assert keep_close_measurements(offer, {"cpu.model": "epyc", "bench.mem.copy.mbps": "1000"},
                                   remeasure=True).labels == offer.labels
    # Free disk within 10 % either way (4 GB of 40) keeps the figure on chain; beyond, the measurement is sent.
    for chain, sent in (("36", "36"), ("44", "44"), ("35", "40"), ("45", "40"), ("41", "41")):
        kept = keep_close_measurements(offer, {"cpu.model": "epyc", "storage.persistent.gb": chain})
        assert kept.labels["storage.persistent.gb"] == sent, chain
    # One GB is the figure's resolution even on a small disk.
    small = Offer(offer.hardware, offer.prices, {"storage.ephemeral.gb": "3"})
    assert keep_close_measurements(small, {"storage.ephemeral.gb": "4"}).labels["storage.ephemeral.gb"] == "4"
    assert keep_close_measurements(small, {"storage.ephemeral.gb": "5"}).labels["storage.ephemeral.gb"] == "3"


def _init_files(grid: Grid, tmp_path: Path, keys: list[str]) -> tuple[Path, dict[str, str]]:
    """The deployment file, the new provider's key (``key``) and keystore password (``pw``) in ``tmp_path``,
    and an environment without DSQ_ settings."""
    dep = tmp_path / "deployment.json"
    grid.deployment.save(dep)
    (tmp_path / "key").write_text(keys[NEW_KEY])
    (tmp_path / "pw").write_text("pw\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")}
    return dep, env


def test_init_refuses_more_than_measured_and_sends_nothing(grid: Grid, tmp_path: Path, keys: list[str]) -> None:
    dep, env = _init_files(grid, tmp_path, keys)
    block = grid.chain.block_number()
    proc = subprocess.run([str(DSQ), "--deployment", str(dep), "--rpc-url", grid.chain.rpc_url, "provider", "init",
                           "--non-interactive", "--executor", "local", "--import-key-file", str(tmp_path / "key"),
                           "--password-file", str(tmp_path / "pw"), "--dir", str(tmp_path / "p"), "--cpus", "9999"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "refusing to offer more than the self-check measured: cpus: offers 9999" in proc.stderr
    assert grid.chain.block_number() == block
    register = subprocess.run([str(DSQ), "--deployment", str(dep), "--rpc-url", grid.chain.rpc_url, "provider",
                               "register", "--price-cpu", "1", "--state-dir", str(tmp_path / "r"), "--label",
                               "storage.persistent.gb=99999999", "--label", "gpu.model=H100"],
                              capture_output=True, text=True, env={**env, "DSQ_PRIVATE_KEY": keys[NEW_KEY]},
                              timeout=120)
    assert register.returncode == 2, register.stdout + register.stderr
    assert "label storage.persistent.gb=99999999: measured" in register.stderr
    assert grid.chain.block_number() == block
    check = subprocess.run([str(DSQ), "provider", "check", "--executor", "local", "--state-dir", str(tmp_path / "s"),
                            "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert check.returncode == 0, check.stderr
    data = json.loads(check.stdout)
    assert data["engine"] == "local" and data["labels"]["cpu.model"] == cpu_model()


def test_init_again_prints_each_label_it_changes(grid: Grid, tmp_path: Path, keys: list[str]) -> None:
    dep, env = _init_files(grid, tmp_path, keys)
    base = [str(DSQ), "--deployment", str(dep), "--rpc-url", grid.chain.rpc_url, "provider", "init",
            "--non-interactive", "--executor", "local", "--password-file", str(tmp_path / "pw"),
            "--dir", str(tmp_path / "p"), "--price-cpu", "0.001"]

    def init(*extra: str) -> str:
        proc = subprocess.run(base + list(extra), capture_output=True, text=True, env=env, timeout=120)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    assert "6. on chain: registered" in init("--import-key-file", str(tmp_path / "key"), "--label", "tier=silver")
    client = ProviderClient(grid.chain.wallet(keys[NEW_KEY]), grid.deployment)
    published = chain_labels(client)["bench.cpu.sha256.mbps"]
    again = init("--label", "tier=gold")
    assert "6. on chain: updated labels" in again and "   label tier: silver -> gold" in again
    assert chain_labels(client)["bench.cpu.sha256.mbps"] == published  # the same CPU: the benchmark stays
    fresh = init("--label", "tier=gold", "--remeasure")
    assert chain_labels(client)["tier"] == "gold"
    # three benchmark figures in MB/s, all equal to the last run's: never seen
    assert re.search(r"^   label bench\.[a-z.0-9]+: \d+ -> \d+$", fresh, re.M), fresh


# ------------------------------------------------------------------------------------------ heartbeat and doctor
def test_worker_heartbeat_and_doctor(grid: Grid, anvil: AnvilNode, keys: list[str], tmp_path: Path) -> None:
    wallet = Chain(anvil.rpc_url).wallet(keys[NEW_KEY])
    client = ProviderClient(wallet, grid.deployment)
    ex = LocalExecutor(tmp_path / "state" / "executor")
    sync_registration(client, Offer(Resources(1, 0, 512), CPU_PRICES, {}))

    def run_doctor(now: float | None = None) -> dict[str, tuple[bool | None, str, str]]:
        checks = diagnose(private_key=lambda: keys[NEW_KEY], deployment=lambda: grid.deployment,
                          rpc_url=lambda d: anvil.rpc_url, executor=lambda: ex, state_dir=tmp_path / "state",
                          now=(lambda: now) if now else time.time)
        return {c.name: (c.ok, c.detail, c.fix) for c in checks}

    found = run_doctor()
    assert found["approval"][0] is False and f"dsq admin approve {client.address}" in found["approval"][2]
    assert found["worker"][0] is False and "no heartbeat.json" in found["worker"][1]
    grid.admin.approve(client.address)
    worker = ProviderWorker(wallet, grid.deployment, ex, tmp_path / "state", poll_interval=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while read_heartbeat(tmp_path / "state") is None:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.1)
        beat = read_heartbeat(tmp_path / "state")
        assert beat is not None and beat.address == client.address and beat.pid == os.getpid()
        chain_now = grid.chain.timestamp()  # the shared Anvil's clock may differ from ours: judge against it
        found = run_doctor()
        assert all(ok for name, (ok, _, _) in found.items() if name != "clock"), found
        assert run_doctor(now=chain_now + 1)["clock"][0] is True
        assert run_doctor(now=chain_now + 120)["clock"][0] is True  # a block 2 minutes old: not a stalled chain
        stale = run_doctor(now=beat.time + 120)
        assert stale["worker"][0] is False and "last heartbeat" in stale["worker"][1]
        behind = run_doctor(now=chain_now - 100)["clock"]
        assert behind[0] is False and "100 s behind chain time" in behind[1] and "sync the clock" in behind[2]
        stalled = run_doctor(now=chain_now + 1000)["clock"]
        assert stalled[0] is False and "older than this machine's clock" in stalled[1]
    finally:
        stop.set()
        thread.join(timeout=10)
        worker.close()


# ------------------------------------------------------------------------------------------ interactive init
def _interact(argv: list[str], env: dict[str, str], cwd: Path, answers: list[tuple[str, str]],
              timeout: float = 120) -> tuple[int, str]:
    """Runs ``argv`` on a pseudo-terminal, answering each prompt that contains ``expect`` with ``reply``."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal (getpass reads /dev/tty)
        os.chdir(cwd)
        os.execve(argv[0], argv, env)
    seen, pending, pos = "", list(answers), 0
    deadline = time.monotonic() + timeout
    status = None
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096).decode(errors="replace")
                except OSError:  # EIO: the child closed the terminal
                    chunk = ""
                if not chunk:
                    break
                seen += chunk
            if pending and pending[0][0] in seen[pos:]:
                pos = seen.index(pending[0][0], pos) + len(pending[0][0])
                time.sleep(0.3)  # let the prompt finish setting the terminal up
                os.write(fd, pending.pop(0)[1].encode())
        done, status = os.waitpid(pid, os.WNOHANG)
        if done == 0:  # still running after the deadline: stop it
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    assert not pending, f"prompts never seen: {pending}\n{seen}"
    return os.waitstatus_to_exitcode(status), seen


def test_init_interactively(grid: Grid, tmp_path: Path, keys: list[str]) -> None:
    dep = tmp_path / "deployment.json"
    grid.deployment.save(dep)
    (tmp_path / "key").write_text(keys[NEW_KEY])
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_") and k != "SLURM_CONF"}
    env["SLURM_CONF"] = str(tmp_path / "no-slurm.conf")  # no cluster here: the engine proposed is local
    code, seen = _interact(
        [str(DSQ), "--deployment", str(dep), "--rpc-url", grid.chain.rpc_url, "provider", "init",
         "--import-key-file", str(tmp_path / "key"), "--dir", str(tmp_path / "p")],
        env, tmp_path,
        # hidden prompts: click prints the text, then getpass turns echo off (flushing early input) and prints " "
        [("keystore.json: ", "pw\n"), ("Repeat for confirmation: ", "pw\n"), ("2. engine", "\n"),
         ("price-cpu", "0.002\n"), ("price-gpu", "\n"), ("price-gb", "\n"), ("region label", "eu-int\n")])
    assert code == 0, seen
    config = json.loads((tmp_path / "p" / "config.json").read_text())
    assert config["provider"]["executor"] == "local" and config["provider"]["region"] == "eu-int"
    assert config["provider"]["prices"]["cpu"] == 2000
    info = ProviderClient(grid.chain.wallet(keys[NEW_KEY]), grid.deployment).info()
    # the rest proposed
    assert info.prices == Prices(Credits("0.002"), CPU_PRICES.per_gpu_minute, CPU_PRICES.per_gb_minute)
    assert "6. on chain: registered; status PENDING" in seen
