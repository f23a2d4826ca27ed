"""The `dsq` command line through its real entry point (the console script), against a real Anvil.

Bad input must give one line on stderr, a non-zero exit code that means something, and send no
transaction (the block number does not move).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from eth_account import Account

from dsq_chain import errors
from dsq_chain.matching import compiled as compiled_search
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import free_port
from dsq_chain.sdk.client import placement_labels
from dsq_chain.types import CREDIT_UNIT, JobStatus
from dsq_chain.workloads import workflow as wfmod
from tests.grid import Grid

ROOT = Path(__file__).resolve().parent.parent
DSQ = shutil.which("dsq", path=str(Path(sys.executable).parent)) or "dsq"
HELLO = ROOT / "examples" / "hello.yaml"
EXIT_JOB_FAILED, EXIT_INPUT, EXIT_CHAIN, EXIT_CONTRACT, EXIT_TIMEOUT = 1, 2, 3, 4, 5


class Cli:
    def __init__(self, grid: Grid, tmp: Path, keys: list[str]) -> None:
        self.grid = grid
        self.tmp = tmp
        self.keys = keys
        self.deployment = tmp / "deployment.json"
        grid.deployment.save(self.deployment)

    def run(self, *args: str, key: str | None = None, env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")}
        if key is not None:
            full_env["DSQ_PRIVATE_KEY"] = key
        full_env.update(env or {})
        return subprocess.run([DSQ, "--deployment", str(self.deployment), *args], capture_output=True, text=True,
                              env=full_env, cwd=self.tmp, timeout=timeout)

    def ok(self, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
        proc = self.run(*args, **kw)  # type: ignore[arg-type]
        assert proc.returncode == 0, f"dsq {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def fails(self, code: int, *args: str, **kw: object) -> str:
        """Runs a command that must fail with ``code``, send nothing, and say why in one line."""
        before = self.grid.chain.block_number()
        proc = self.run(*args, **kw)  # type: ignore[arg-type]
        assert proc.returncode == code, f"dsq {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1, f"expected one line on stderr, got:\n{proc.stderr}"
        assert lines[0].startswith("dsq: error: ")
        assert self.grid.chain.block_number() == before, "a failing command sent a transaction"
        return lines[0]


@pytest.fixture
def cli(grid: Grid, tmp_path: Path, keys: list[str]) -> Cli:
    return Cli(grid, tmp_path, keys)


def user_key(cli: Cli) -> str:
    return cli.keys[2]  # grid.users[0]


def test_submit_list_show_cancel(cli: Cli) -> None:
    out = cli.ok("submit", str(HELLO), "--credits", "5", "--max-rate", "10", "--json", key=user_key(cli)).stdout
    job_id = json.loads(out)["job_ids"][0]
    assert cli.grid.user.job(job_id).status is JobStatus.PENDING
    assert cli.grid.user.job(job_id).escrow == 5 * CREDIT_UNIT

    mine = json.loads(cli.ok("jobs", "--mine", "--json", key=user_key(cli)).stdout)
    assert [j["id"] for j in mine] == [job_id] and mine[0]["status"] == "PENDING"
    shown = json.loads(cli.ok("job", str(job_id), "--json").stdout)
    assert shown["history"][0]["event"] == "JobSubmitted" and shown["status"] == "PENDING"

    cli.ok("top-up", str(job_id), "2.5", key=user_key(cli))
    assert cli.grid.user.job(job_id).escrow == 7_500_000
    assert "canceled" in cli.ok("cancel", str(job_id), key=user_key(cli)).stdout
    shown = json.loads(cli.ok("job", str(job_id), "--json").stdout)
    assert shown["status"] == "CANCELED" and shown["refunded"] == 7_500_000 and shown["billed"] == 0
    table = cli.ok("job", str(job_id)).stdout
    assert "CANCELED" in table and "JobToppedUp" in table


def test_human_tables_and_status_filter(cli: Cli) -> None:
    wf = wfmod.load(HELLO)
    ids = cli.grid.user.submit(wf, credits=Credits(1), max_rate=Credits(10), count=3)
    cli.grid.user.cancel(ids[0])
    listing = json.loads(cli.ok("jobs", "--status", "canceled", "--json").stdout)
    assert [j["id"] for j in listing] == [ids[0]]
    assert str(ids[2]) in cli.ok("jobs").stdout
    providers = json.loads(cli.ok("provider", "list", "--json").stdout)
    assert {p["status"] for p in providers} == {"APPROVED", "PENDING"}
    assert "APPROVED" in cli.ok("provider", "list").stdout


def test_explain_names_the_failing_constraint(cli: Cli, tmp_path: Path) -> None:
    wf = tmp_path / "big.yaml"
    wf.write_text("resources: {tasks: 1, cpusPerTask: 4, memPerCpu: 256, gpus: 2}\n"
                  "labels: ['gpu.model == H100']\nsteps: [{name: a, run: {command: 'true'}}]\n")
    # without --force nothing is sent: the same verdicts as explain, computed before submitting
    refused = cli.fails(EXIT_INPUT, "submit", str(wf), "--credits", "1", key=user_key(cli))
    assert "no approved provider can run this job" in refused and "--force" in refused
    job_id = json.loads(cli.ok("submit", str(wf), "--credits", "1", "--force", "--json",
                               key=user_key(cli)).stdout)["job_ids"][0]
    text = cli.ok("explain", str(job_id)).stdout
    assert "placeable on 0 of 4 providers" in text
    assert "gpus: needs 2, has 0 free" in text
    assert "label gpu.model == H100: provider has A100" in text
    sdk = _sdk_reasons(cli, wf)
    for address, reason in sdk.items():
        assert f"{address}: {reason}" in text, (address, reason)


def _sdk_reasons(cli: Cli, wf: Path) -> dict[str, str]:
    """The SDK's per-provider reasons for refusing ``wf`` (they must be explain's verdicts)."""
    with pytest.raises(errors.Infeasible) as info:
        cli.grid.user.submit(wf, credits=Credits(1), max_rate=Credits(1000))
    return info.value.reasons


def test_submit_with_direct_placement_and_explain_shows_it(cli: Cli) -> None:
    g = cli.grid
    out = cli.ok("submit", str(HELLO), "--credits", "1", "--provider", g.spare.address, "--json",
                 key=user_key(cli)).stdout
    job_id = json.loads(out)["job_ids"][0]
    text = cli.ok("explain", str(job_id)).stdout
    assert "placement: not among the providers the job allows" in text
    assert text.count("placement: not among") == 2  # cpu and gpu; the pending provider is inactive first
    with pytest.raises(errors.ProviderNotAllowed):
        g.scheduler.assign(job_id, g.cpu.address, placement_labels([g.spare.address]))
    g.scheduler.assign(job_id, g.spare.address, placement_labels([g.spare.address]))
    assert g.user.job(job_id).provider == g.spare.address
    assert "not a provider address" in cli.fails(EXIT_INPUT, "submit", str(HELLO), "--credits", "1",
                                                  "--exclude", "nope", key=user_key(cli))


def test_bad_workflow_is_one_line_with_file_line_field(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources:\n  tasks: 0\n  cpusPerTask: 1\n  memPerCpu: 64\nsteps: [{name: a, run: {command: x}}]\n")
    line = cli.fails(EXIT_INPUT, "submit", str(bad), "--credits", "1", key=user_key(cli))
    assert "bad.yaml:2" in line and "resources.tasks" in line
    missing = tmp_path / "missing.yaml"
    missing.write_text("resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64}\n")
    assert "steps" in cli.fails(EXIT_INPUT, "submit", str(missing), "--credits", "1", key=user_key(cli))
    assert "cannot read" in cli.fails(EXIT_INPUT, "submit", str(tmp_path / "nope.yaml"), "--credits", "1",
                                      key=user_key(cli))


@pytest.mark.parametrize("amount", ["-5", "0", "abc", "1.0000001"])
def test_bad_credit_amounts(cli: Cli, amount: str) -> None:
    line = cli.fails(EXIT_INPUT, "submit", str(HELLO), "--credits", amount, key=user_key(cli))
    assert "credits" in line


def test_unknown_job_and_wrong_key(cli: Cli) -> None:
    assert "JobNotFound" in cli.fails(EXIT_CONTRACT, "job", "999999")
    assert "JobNotFound" in cli.fails(EXIT_CONTRACT, "cancel", "999999", key=user_key(cli))
    assert "private key" in cli.fails(EXIT_INPUT, "cancel", "1", key="0xnot-a-key")
    assert "DSQ_PRIVATE_KEY" in cli.fails(EXIT_INPUT, "cancel", "1")
    job_id = cli.grid.submit()
    other = cli.keys[3]  # grid.users[1]
    assert "NotJobOwner" in cli.fails(EXIT_CONTRACT, "cancel", str(job_id), key=other)
    assert "negative" not in cli.fails(EXIT_INPUT, "top-up", str(job_id), "-1", key=user_key(cli))


def test_keystore_and_config_file(cli: Cli, tmp_path: Path) -> None:
    keystore = tmp_path / "key.json"
    keystore.write_text(json.dumps(Account.encrypt(user_key(cli), "s3cret")))
    out = cli.ok("--keystore", str(keystore), "balance", "--json", env={"DSQ_KEYSTORE_PASSWORD": "s3cret"}).stdout
    assert json.loads(out)["account"] == cli.grid.user.address
    assert user_key(cli)[2:] not in out
    assert "wrong password" in cli.fails(EXIT_INPUT, "--keystore", str(keystore), "balance",
                                         env={"DSQ_KEYSTORE_PASSWORD": "nope"})
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"rpc_url": "http://127.0.0.1:1", "deployment": str(cli.deployment)}))
    # the flag wins over the config file; the config file's RPC URL is used when nothing else says
    proc = subprocess.run([DSQ, "--config", str(config), "provider", "list", "--json"], capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == EXIT_CHAIN and "unreachable" in proc.stderr
    proc = subprocess.run([DSQ, "--config", str(config), "--rpc-url", cli.grid.chain.rpc_url, "provider", "list",
                           "--json"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr


def test_watch_exit_codes(cli: Cli) -> None:
    pending = cli.grid.submit()
    assert "still PENDING" in cli.fails(EXIT_TIMEOUT, "watch", str(pending), "--timeout", "1")
    finished = cli.grid.job_in(JobStatus.FINISHED)
    assert cli.run("watch", str(finished)).returncode == 0
    failed = cli.grid.job_in(JobStatus.FAILED)
    assert cli.run("watch", str(failed)).returncode == EXIT_JOB_FAILED
    refunds = cli.grid.user.credits()
    tokens = cli.grid.user.token_balance()
    assert refunds > 0 and "withdrew" in cli.ok("withdraw", key=user_key(cli)).stdout
    assert cli.grid.user.credits() == 0 and cli.grid.user.token_balance() == tokens + refunds
    assert "NothingToWithdraw" in cli.fails(EXIT_CONTRACT, "withdraw", key=user_key(cli))  # the contract's error


def test_provider_and_admin_commands(cli: Cli) -> None:
    provider_key = cli.keys[10]
    address = Account.from_key(provider_key).address
    too_big = cli.fails(EXIT_INPUT, "provider", "register", "--price-cpu", "1", "--cpus", "100000",
                        "--state-dir", str(cli.tmp / "w"), key=provider_key)
    assert "refusing to register" in too_big and "detects" in too_big
    cli.ok("provider", "register", "--price-cpu", "1", "--cpus", "1", "--mem-mb", "512", "--label", "zone=eu",
           "--state-dir", str(cli.tmp / "w"), key=provider_key)
    admin = cli.keys[0]
    assert "AccessControlUnauthorizedAccount" in cli.fails(EXIT_CONTRACT, "admin", "approve", address,
                                                           key=provider_key)
    cli.ok("admin", "approve", address, key=admin)
    info = cli.grid.admin.provider(address)
    assert info.status.name == "APPROVED" and info.total.cpus == 1 and info.total.mem_mb == 512
    cli.ok("provider", "pause", key=provider_key)
    assert cli.grid.admin.provider(address).paused
    cli.ok("provider", "resume", key=provider_key)
    cli.ok("provider", "update", "--price-cpu", "2", "--label", "zone=us", key=provider_key)
    assert cli.grid.admin.provider(address).prices.per_cpu_minute == 2 * CREDIT_UNIT
    assert "nothing to update" in cli.fails(EXIT_INPUT, "provider", "update", key=provider_key)
    assert "NothingToWithdraw" in cli.fails(EXIT_CONTRACT, "provider", "withdraw", key=provider_key)
    cli.ok("admin", "mint", address, "3", key=admin)
    assert cli.grid.admin.token_balance(address) == 3 * CREDIT_UNIT
    assert "not an address" in cli.fails(EXIT_INPUT, "admin", "ban", "0x123", key=admin)
    cli.ok("admin", "ban", address, key=admin)
    assert cli.grid.admin.provider(address).status.name == "BANNED"
    role = cli.grid.admin.market.functions.SCHEDULER_ROLE().call()
    assert not cli.grid.admin.market.functions.hasRole(role, address).call()
    cli.ok("admin", "grant-scheduler", address, key=admin)
    assert cli.grid.admin.market.functions.hasRole(role, address).call()


def test_preview_and_build_check(cli: Cli) -> None:
    rows = json.loads(cli.ok("preview", str(HELLO), "--credits", "1", "--json").stdout)
    assert {r["provider"] for r in rows} == {cli.grid.cpu.address, cli.grid.gpu.address, cli.grid.spare.address}
    cpu = next(r for r in rows if r["provider"] == cli.grid.cpu.address)
    wf = wfmod.load(HELLO)
    rate = cli.grid.cpu.info().prices.rate_for(wf.resources)
    assert cpu["rate_per_minute"] == rate and cpu["max_runtime_seconds"] == CREDIT_UNIT * 60 // rate
    assert "fresh" in cli.ok("build", "--check").stdout


@pytest.mark.slow
def test_services_run_a_job_and_logs_show_it(cli: Cli) -> None:
    """`dsq scheduler run` + `dsq worker run` as processes: a submitted job finishes, `dsq logs` shows it."""
    worker_key = cli.keys[11]
    state = cli.tmp / "worker"
    cli.ok("provider", "register", "--price-cpu", "0.001", "--cpus", "1", "--mem-mb", "1024", "--label", "zone=cli",
           "--state-dir", str(state), key=worker_key)
    cli.ok("admin", "approve", Account.from_key(worker_key).address, key=cli.keys[0])
    wf = cli.tmp / "pinned.yaml"
    wf.write_text("resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 64}\nlabels: ['zone == cli']\n"
                  "steps: [{name: a, run: {command: 'echo hello from the cli test'}}]\n")
    job_id = json.loads(cli.ok("submit", str(wf), "--credits", "1", "--json", key=user_key(cli)).stdout)["job_ids"][0]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")}
    procs = [
        subprocess.Popen([DSQ, "--deployment", str(cli.deployment), "scheduler", "run"],
                         env={**env, "DSQ_PRIVATE_KEY": cli.keys[1]}, cwd=cli.tmp,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
        subprocess.Popen([DSQ, "--deployment", str(cli.deployment), "worker", "run", "--state-dir", str(state),
                          "--poll", "0.1"], env={**env, "DSQ_PRIVATE_KEY": worker_key}, cwd=cli.tmp,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
    ]
    try:
        job = cli.grid.user.wait_for(job_id, timeout=60)
        assert job.status is JobStatus.FINISHED
        assert cli.run("watch", str(job_id)).returncode == 0
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        codes = [p.wait(20) for p in procs]
    outputs = [p.stdout.read().decode() if p.stdout else "" for p in procs]
    assert codes == [0, 0], outputs
    # the operator sees which search the scheduler's matcher runs (compiled where the install built it)
    assert f"matcher: {compiled_search.describe()}" in outputs[0]
    assert "hello from the cli test" in cli.ok("logs", str(job_id), "--state-dir", str(state)).stdout
    assert "never ran" in cli.fails(EXIT_INPUT, "logs", "999999", "--state-dir", str(state))


def test_devnet_up_and_down(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")}
    up = subprocess.run([DSQ, "devnet", "up", "--port", str(port), "--dir", str(tmp_path / "net")],
                        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        dep = json.loads((tmp_path / "net" / "deployment.json").read_text())
        assert dep["rpc_url"] == f"http://127.0.0.1:{port}"
        again = subprocess.run([DSQ, "devnet", "up", "--port", str(port), "--dir", str(tmp_path / "net")],
                               capture_output=True, text=True, env=env, cwd=tmp_path)
        assert again.returncode == EXIT_INPUT and "already running" in again.stderr
        key = subprocess.run([DSQ, "devnet", "key", "2"], capture_output=True, text=True).stdout.strip()
        bal = subprocess.run([DSQ, "--deployment", str(tmp_path / "net" / "deployment.json"), "balance", "--json"],
                             capture_output=True, text=True, env={**env, "DSQ_PRIVATE_KEY": key})
        assert json.loads(bal.stdout)["tokens"] == 10_000 * CREDIT_UNIT
    finally:
        down = subprocess.run([DSQ, "devnet", "down", "--dir", str(tmp_path / "net")], capture_output=True, text=True)
    assert down.returncode == 0, down.stderr
    time.sleep(0.2)
    assert not (tmp_path / "net" / "devnet.json").exists()


def test_submit_refuses_every_error_of_a_deepsquare_file_and_warns_of_retired_fields(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("resources: {tasks: 0, cpusPerTask: 1, memPerCpu: 1}\nvirtualNetworks: []\n"
                   "steps: [{run: {command: 'true', container: {image: x, x11: true}}}]\n")
    before = cli.grid.chain.block_number()
    proc = cli.run("submit", str(bad), "--credits", "1", key=user_key(cli))
    assert proc.returncode == 2 and cli.grid.chain.block_number() == before  # nothing sent, no credit locked
    lines = proc.stderr.splitlines()
    assert lines[0].startswith(f"dsq: error: {bad}:1: resources.tasks: expected an integer >= 1, got 0")
    assert any("virtualNetworks: expected no virtualNetworks: refused" in ln for ln in lines)
    assert any("x11: expected false: refused" in ln for ln in lines)
    retired = tmp_path / "retired.yaml"
    retired.write_text("resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 256, gpusPerTask: 0}\n"
                       "steps: [{run: {command: 'true'}}]\n")
    proc = cli.ok("submit", str(retired), "--credits", "1", "--max-rate", "10", key=user_key(cli))
    assert "warning: " in proc.stderr and "gpusPerTask is retired: write gpus: 0" in proc.stderr


@pytest.mark.parametrize(("raised", "code", "says"), [
    (requests.ConnectionError(ConnectionResetError(104, "reset by peer")), EXIT_CHAIN, "RPC node unreachable"),
    (ConnectionResetError(104, "Connection reset by peer"), EXIT_CHAIN, "RPC node unreachable"),
    (requests.Timeout("read timed out"), EXIT_CHAIN, "RPC node unreachable"),
    (FileNotFoundError(2, "No such file or directory", "job.yaml"), EXIT_INPUT, "cannot read job.yaml"),
])  # fmt: skip
def test_a_transport_error_that_escaped_the_sdk_is_the_nodes_not_a_files(
    raised: BaseException, code: int, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """requests' errors and socket resets are OSErrors: the CLI told them apart from files only by luck (a reset
    in a service's start-up checks said "cannot read a file" and exited 2, which a supervisor takes as a
    configuration error)."""
    import typer

    from dsq_chain.cli.common import errors as cli_errors

    with pytest.raises(typer.Exit) as exit_info, cli_errors():
        raise raised
    assert exit_info.value.exit_code == code
    assert says in capsys.readouterr().err
