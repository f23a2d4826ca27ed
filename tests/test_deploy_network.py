"""`dsq deploy` to a real network: an Anvil that mines a block per second (and an Anvil fork of it),
through the real console script, with an encrypted keystore.

A deployment is priced before anything is sent, waits for its confirmations, checks the code, writes the
deployment file the SDK reads, and resumes after a run killed halfway without sending anything twice.
Refusals are one line on stderr, a meaningful exit code, and nothing sent (the deployer's nonce stays).
"""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from eth_account import Account

from dsq_chain import artifacts
from dsq_chain.cli import main
from dsq_chain.errors import InputError
from dsq_chain.money import Credits
from dsq_chain.sdk.anvil import AnvilNode, dev_keys, free_port, start_anvil
from dsq_chain.sdk.chain import Chain, Wallet
from dsq_chain.sdk.client import AdminClient, GridClient
from dsq_chain.sdk.codecheck import code_difference
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.sdk.network_deploy import (
    InsufficientFunds,
    NetworkDeployer,
    Progress,
    progress_path,
    shareable_rpc_url,
)
from dsq_chain.types import JobStatus

ROOT = Path(__file__).resolve().parent.parent
DSQ = shutil.which("dsq", path=str(Path(sys.executable).parent)) or "dsq"
HELLO = ROOT / "examples" / "hello.yaml"
EXIT_INPUT, EXIT_CHAIN = 2, 3
PASSWORD = "correct horse"


@pytest.fixture
def node() -> Iterator[AnvilNode]:
    """An Anvil mining one block per second, like a real chain (no automine)."""
    with start_anvil(block_time=1) as n:
        yield n


class Deployer:
    """A fresh funded account in an encrypted keystore, and `dsq deploy` run with it: through the console
    script (:meth:`run`, :meth:`popen`), or through the CLI's ``main`` in this process (:meth:`ok`,
    :meth:`fails`: the same code, without a second of interpreter start-up each)."""

    def __init__(self, tmp: Path, rpc_url: str, capsys: pytest.CaptureFixture[str],
                 monkeypatch: pytest.MonkeyPatch, *, ether: float = 10.0) -> None:
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        for name in os.environ:
            if name.startswith("DSQ_"):
                monkeypatch.delenv(name)
        self.tmp = tmp
        self.rpc_url = rpc_url
        self.account = Account.create()
        self.keystore = tmp / "deployer.json"
        # pbkdf2 with few iterations keeps the test fast; real keystores use scrypt (both decrypt the same way).
        self.keystore.write_text(json.dumps(Account.encrypt(self.account.key, PASSWORD, kdf="pbkdf2",
                                                            iterations=1000)))
        self.password_file = tmp / "password"
        self.password_file.write_text(PASSWORD + "\n")
        self.deployment = tmp / "deployment.json"
        self.last_stdout = ""
        self.fund(rpc_url, ether)

    def fund(self, rpc_url: str, ether: float) -> None:
        Chain(rpc_url).call_rpc("anvil_setBalance", [self.account.address, hex(int(ether * 10**18))])

    def args(self, *extra: str, rpc_url: str | None = None, password_file: Path | None = None) -> list[str]:
        return [DSQ, "deploy", "--rpc-url", rpc_url or self.rpc_url, "--keystore", str(self.keystore),
                "--password-file", str(password_file or self.password_file), "--deployment", str(self.deployment),
                *extra]

    def env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if not k.startswith("DSQ_")}

    def run(self, *extra: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """The console script in a new process."""
        return subprocess.run(self.args(*extra), capture_output=True, text=True, env=self.env(), cwd=self.tmp,
                              stdin=subprocess.DEVNULL, timeout=timeout)

    def popen(self, *extra: str) -> subprocess.Popen[str]:
        """The console script in a new process, its output line by line."""
        return subprocess.Popen(self.args(*extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, env=self.env() | {"PYTHONUNBUFFERED": "1"},
                                cwd=self.tmp)

    def main(self, *extra: str, rpc_url: str | None = None,
             password_file: Path | None = None) -> subprocess.CompletedProcess[str]:
        """The CLI's ``main`` in this process (stdin is no terminal under pytest)."""
        self.capsys.readouterr()
        self.monkeypatch.setattr(sys, "argv", self.args(*extra, rpc_url=rpc_url, password_file=password_file))
        self.monkeypatch.chdir(self.tmp)
        try:
            main()
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        out, err = self.capsys.readouterr()
        return subprocess.CompletedProcess(sys.argv, code, out, err)

    def ok(self, *extra: str) -> str:
        proc = self.main(*extra)
        assert proc.returncode == 0, f"dsq deploy -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc.stdout

    def fails(self, code: int, *extra: str, **kw: object) -> str:
        """A run that must fail with ``code`` in one line on stderr, sending nothing."""
        rpc = str(kw.get("rpc_url") or self.rpc_url)
        before = self.nonce(rpc)
        proc = self.main(*extra, **kw)  # type: ignore[arg-type]
        assert proc.returncode == code, f"dsq deploy -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("dsq: error: "), proc.stderr
        assert self.nonce(rpc) == before, "a refused deployment sent a transaction"
        self.last_stdout = proc.stdout
        return lines[0]

    def nonce(self, rpc_url: str | None = None) -> int:
        chain = Chain(rpc_url or self.rpc_url)
        return int(chain.call_rpc("eth_getTransactionCount", [self.account.address, "latest"]), 16) if chain.is_up() \
            else -1

    def progress(self) -> Progress:
        return Progress.load(progress_path(self.deployment))


def submit_a_job(rpc_url: str, dep: Deployment, admin_key: str) -> None:
    """The deployment works: the admin mints credits and a user's job lands PENDING."""
    chain = Chain(rpc_url)
    user = dev_keys(4)[3]
    AdminClient(chain.wallet(admin_key), dep).mint(Account.from_key(user).address, Credits(20))
    grid = GridClient.connect(rpc_url, dep, user)
    job_id = grid.submit(HELLO, credits="5", max_rate="1", force=True)[0]
    assert grid.job(job_id).status is JobStatus.PENDING


@pytest.fixture
def deployer(node: AnvilNode, tmp_path: Path, capsys: pytest.CaptureFixture[str],
             monkeypatch: pytest.MonkeyPatch) -> Callable[..., Deployer]:
    """Makes a :class:`Deployer` (in its own folder under ``tmp_path``) on ``node`` or another node."""
    def make(name: str = "a", rpc_url: str | None = None, ether: float = 10.0) -> Deployer:
        folder = tmp_path / name
        folder.mkdir()
        return Deployer(folder, rpc_url or node.rpc_url, capsys, monkeypatch, ether=ether)
    return make


def test_deploy_waits_for_confirmations_checks_the_code_and_the_deployment_works(
        node: AnvilNode, deployer: Callable[..., Deployer]) -> None:
    d = deployer()
    proc = d.run("--confirmations", "2", "--admin-delay", "0", "--claim-timeout", "600", "--yes")  # the console script
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # Priced first: the cost line comes before anything is sent.
    lines = proc.stdout.splitlines()
    cost = next(i for i, ln in enumerate(lines) if ln.startswith("cost: about "))
    assert cost < next(i for i, ln in enumerate(lines) if " sent 0x" in ln)
    assert re.search(r"at most [0-9.]+ ETH \(gas limits [0-9,]+\); the account holds 10 ETH", lines[cost])
    dep = Deployment.load(d.deployment)
    chain = Chain(node.rpc_url)
    progress = d.progress()
    assert [s.address for s in progress.steps] == [dep.token, dep.registry, dep.market]
    for step in progress.steps:
        receipt = chain.w3.eth.get_transaction_receipt(step.tx)  # type: ignore[arg-type]
        assert receipt["blockNumber"] == step.block
        assert code_difference(step.contract, bytes(chain.w3.eth.get_code(step.address))) is None  # type: ignore[arg-type]
    # Each step was sent only once the one before was 2 blocks deep.
    blocks = [s.block or 0 for s in progress.steps]
    assert blocks[1] - blocks[0] >= 2 and blocks[2] - blocks[1] >= 2, blocks
    assert d.nonce() == 3
    market = chain.w3.eth.contract(address=dep.market, abi=artifacts.abi("JobMarket"))  # type: ignore[call-overload]
    assert (market.functions.claimTimeout().call(), market.functions.adminDelay().call()) == (600, 0)
    assert dep.admin == d.account.address and dep.chain_id == 31337
    submit_a_job(node.rpc_url, dep, d.account.key.to_0x_hex())

    # Run again: everything is checked on chain and kept; nothing is sent.
    before = d.nonce()  # (the admin minted)
    again = d.ok("--confirmations", "2", "--yes")
    assert again.count(", kept") == 3 and " sent " not in again
    assert d.nonce() == before and Deployment.load(d.deployment) == dep


def test_deploy_onto_a_fork_of_a_running_chain(node: AnvilNode, deployer: Callable[..., Deployer]) -> None:
    Chain(node.rpc_url).mine(3)
    with start_anvil(block_time=1, extra_args=["--fork-url", node.rpc_url]) as fork:
        d = deployer(rpc_url=fork.rpc_url)
        d.ok("--confirmations", "2", "--admin-delay", "0", "--yes")
        dep = Deployment.load(d.deployment)
        assert dep.rpc_url == fork.rpc_url and dep.chain_id == Chain(node.rpc_url).chain_id
        assert dep.block > 3  # on top of the forked chain's blocks
        submit_a_job(fork.rpc_url, dep, d.account.key.to_0x_hex())
        # The fork's contracts are the fork's alone.
        assert bytes(Chain(node.rpc_url).w3.eth.get_code(dep.market)) == b""  # type: ignore[arg-type]


def _wait_for(predicate: Callable[[], object], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _recorded(d: Deployer, index: int, field: str) -> object:
    """A field of a step in the progress file (None while the file is not written yet)."""
    try:
        return getattr(d.progress().steps[index], field)
    except InputError:
        return None


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.kill()  # as a crash, an OOM kill or a lost SSH session would
    proc.wait()
    if proc.stdout:
        proc.stdout.close()


def test_a_run_killed_halfway_resumes_and_sends_nothing_twice(
        node: AnvilNode, deployer: Callable[..., Deployer]) -> None:
    d = deployer()
    proc = d.popen("--confirmations", "2", "--yes")
    try:
        _wait_for(lambda: _recorded(d, 0, "block") is not None, "the first contract to be confirmed")
    finally:
        _kill(proc)
    first = d.progress()
    token = first.steps[0]
    assert token.done and not first.steps[2].tx
    assert not d.deployment.exists()

    out = d.ok("--confirmations", "2", "--yes")
    assert f"CreditToken: deployed at {token.address} (block {token.block}), kept" in out
    assert "CreditToken: sent 0x" not in out
    done = d.progress()
    assert (done.steps[0].tx, done.steps[0].address) == (token.tx, token.address)
    never_arrived = f"ProviderRegistry: {first.steps[1].tx}, sent by an earlier run, never reached the chain"
    if first.steps[1].tx and never_arrived not in out:  # sent before the kill: waited for, not sent again
        assert done.steps[1].tx == first.steps[1].tx and "ProviderRegistry: sent 0x" not in out
    # (A kill between recording the registry's transaction and the node receiving it leaves nothing on chain:
    # the resume sends it then, once, at the same nonce. Seen in CI.)
    assert d.nonce() == 3, "a transaction was sent twice"
    dep = Deployment.load(d.deployment)
    assert (dep.token, dep.registry, dep.market) == tuple(s.address for s in done.steps)

    # What the progress file pins: the chain, the artifacts, the contracts at the recorded addresses.
    with start_anvil(extra_args=["--chain-id", "4242"]) as other:
        d.fund(other.rpc_url, 10)
        line = d.fails(EXIT_INPUT, "--yes", rpc_url=other.rpc_url)
        assert "records chain id 31337" in line and "is chain 4242" in line
    path = progress_path(d.deployment)
    recorded = json.loads(path.read_text())
    changed = json.loads(path.read_text())
    changed["artifacts"]["JobMarket"] = "0" * 64
    path.write_text(json.dumps(changed))
    assert "the contracts changed since the deployment" in d.fails(EXIT_INPUT, "--yes")
    swapped = json.loads(json.dumps(recorded))
    swapped["steps"][0]["address"], swapped["steps"][1]["address"] = \
        recorded["steps"][1]["address"], recorded["steps"][0]["address"]
    path.write_text(json.dumps(swapped))
    line = d.fails(EXIT_INPUT, "--yes")
    assert f"CreditToken at {recorded['steps'][1]['address']} is not the artifacts' contract" in line


def _killed_with_first_in_pool(d: Deployer, chain: Chain) -> str:
    """Runs a deployment while the node does not mine, kills it once its first transaction is in the
    node's pool, and returns that transaction's hash."""
    chain.call_rpc("evm_setIntervalMining", [0])
    proc = d.popen("--yes")
    try:
        _wait_for(lambda: bool(_recorded(d, 0, "tx")) and
                  chain.call_rpc("eth_getTransactionByHash", [_recorded(d, 0, "tx")]) is not None,
                  "the first transaction to reach the pool")
    finally:
        _kill(proc)
    return str(d.progress().steps[0].tx)


def test_a_transaction_dropped_from_the_pool_is_sent_again(node: AnvilNode, deployer: Callable[..., Deployer]) -> None:
    chain = Chain(node.rpc_url)
    d = deployer()
    dropped = _killed_with_first_in_pool(d, chain)
    chain.call_rpc("anvil_dropTransaction", [dropped])
    chain.call_rpc("evm_setIntervalMining", [1])
    out = d.ok("--yes")
    assert f"{dropped}, sent by an earlier run, never reached the chain: sending again" in out
    assert "CreditToken: sent 0x" in out and d.nonce() == 3  # (the same bytes again when the fees did not move)
    assert d.progress().steps[0].done


def test_a_transaction_still_in_the_pool_is_waited_for(node: AnvilNode, deployer: Callable[..., Deployer]) -> None:
    chain = Chain(node.rpc_url)
    d = deployer()
    pooled = _killed_with_first_in_pool(d, chain)
    proc = d.popen("--yes")  # the node still does not mine: the new run must find it in the pool
    assert proc.stdout is not None
    try:
        waiting = f"CreditToken: {pooled}, sent by an earlier run, is waiting in the pool\n"
        seen: list[str] = []
        while waiting not in seen:
            seen.append(proc.stdout.readline())
            assert seen[-1], "".join(seen)  # (the run ended without saying so)
        chain.call_rpc("evm_setIntervalMining", [1])
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 0, "".join(seen) + rest
    finally:
        _kill(proc)
    assert "CreditToken: sent 0x" not in rest
    assert d.progress().steps[0].tx == pooled and d.nonce() == 3


def test_a_transaction_stuck_under_the_base_fee_is_replaced_with_higher_fees(node: AnvilNode, tmp_path: Path) -> None:
    """The base fee jumps past the first transaction's cap right after it is sent (a fee spike): after
    ``replace_after`` seconds it is signed again, same nonce, higher fees, and that version is mined."""
    chain = Chain(node.rpc_url)
    account = Account.create()
    chain.call_rpc("anvil_setBalance", [account.address, hex(10**21)])
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        if line.startswith("CreditToken: sent"):
            chain.call_rpc("anvil_setNextBlockBaseFeePerGas", [hex(100 * 10**9)])

    deployer = NetworkDeployer(Wallet(chain, account.key, replace_after=1.0), tmp_path / "deployment.json",
                               admin_delay=0, report=report)
    dep = deployer.run(deployer.prepare())
    token = Progress.load(progress_path(tmp_path / "deployment.json")).steps[0]
    assert len(token.replaced) >= 1 and token.tx not in token.replaced, lines
    assert any(f"{token.replaced[0]} not mined after 1 s: replaced by" in ln for ln in lines), lines
    assert chain.w3.eth.get_transaction_receipt(token.tx)["contractAddress"] == dep.token  # type: ignore[arg-type]
    assert chain.call_rpc("eth_getTransactionReceipt", [token.replaced[0]]) is None
    assert int(chain.call_rpc("eth_getTransactionCount", [account.address, "latest"]), 16) == 3


def test_steps_a_reorg_took_away_are_deployed_again(tmp_path: Path) -> None:
    """A finished deployment whose blocks vanished (the chain went back past them): a new run finds no
    code at the recorded addresses and deploys from there, rather than writing a deployment of nothing."""
    with start_anvil() as n:
        chain = Chain(n.rpc_url)
        account = Account.create()
        chain.call_rpc("anvil_setBalance", [account.address, hex(10**20)])
        before = chain.snapshot()
        path = tmp_path / "deployment.json"
        first = NetworkDeployer(chain.wallet(account.key), path, admin_delay=0)
        first.run(first.prepare())
        chain.revert(before)
        chain.call_rpc("anvil_setBalance", [account.address, hex(10**20)])
        lines: list[str] = []
        again = NetworkDeployer(chain.wallet(account.key), path, report=lines.append)
        plan = again.prepare()
        assert [name for name, _ in plan.todo] == ["CreditToken", "ProviderRegistry", "JobMarket"], lines
        assert lines[0].startswith("CreditToken: recorded at ") and "no code is there now" in lines[0]
        dep = again.run(plan)
        assert all(code_difference(name, bytes(chain.w3.eth.get_code(addr))) is None  # type: ignore[arg-type]
                   for name, addr in (("CreditToken", dep.token), ("ProviderRegistry", dep.registry),
                                      ("JobMarket", dep.market)))


def test_a_node_refusing_halfway_for_funds_names_the_amount_then_the_run_resumes(tmp_path: Path) -> None:
    """The account is emptied elsewhere after the first contract: the node refuses the second
    transaction; the error names what that step needs; once funded, the next run deploys only the rest."""
    with start_anvil() as n:
        chain = Chain(n.rpc_url)
        account = Account.create()
        chain.call_rpc("anvil_setBalance", [account.address, hex(10**20)])

        def drain(line: str) -> None:
            if line.startswith("CreditToken: deployed"):
                chain.call_rpc("anvil_setBalance", [account.address, hex(10**12)])

        path = tmp_path / "deployment.json"
        first = NetworkDeployer(chain.wallet(account.key), path, admin_delay=0, report=drain)
        needs = (r"^insufficient funds: deploying ProviderRegistry needs up to [0-9.]+ ETH \([0-9,]+ gas at up to "
                 rf"[0-9.]+ gwei\), {account.address} holds 0\.000001 ETH$")
        with pytest.raises(InsufficientFunds, match=needs):
            first.run(first.prepare())
        token = Progress.load(progress_path(path)).steps[0]
        assert token.done and not Progress.load(progress_path(path)).steps[1].tx

        chain.call_rpc("anvil_setBalance", [account.address, hex(10**20)])
        lines: list[str] = []
        again = NetworkDeployer(chain.wallet(account.key), path, report=lines.append)
        plan = again.prepare()
        assert [s.contract for s in plan.done] == ["CreditToken"]
        dep = again.run(plan)
        assert dep.token == token.address and not any(ln.startswith("CreditToken: sent") for ln in lines)
        assert int(chain.call_rpc("eth_getTransactionCount", [account.address, "latest"]), 16) == 3


def test_the_question_on_a_terminal_declined_sends_nothing(node: AnvilNode, deployer: Callable[..., Deployer]) -> None:
    d = deployer()
    leader, follower = pty.openpty()
    try:
        os.write(leader, b"n\n")
        proc = subprocess.run(d.args(), stdin=follower, capture_output=True, text=True, env=d.env(), cwd=d.tmp,
                              timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == EXIT_INPUT and "send these transactions? [y/N]" in proc.stdout, proc.stdout
    assert proc.stderr.strip() == "dsq: error: not deploying: declined"
    assert d.nonce() == 0 and not d.deployment.exists()


def test_refusals_are_one_clear_line_and_send_nothing(node: AnvilNode, deployer: Callable[..., Deployer]) -> None:
    d = deployer(ether=0.001)
    wrong = d.tmp / "wrong"
    wrong.write_text("not the password\n")
    assert f"wrong password for keystore {d.keystore}" in d.fails(EXIT_INPUT, "--yes", password_file=wrong)

    line = d.fails(EXIT_INPUT, "--yes")
    at_most = re.search(r"at most ([0-9.]+) ETH \(gas limits", d.last_stdout)
    assert at_most, d.last_stdout
    assert re.fullmatch(rf"dsq: error: insufficient funds: deploying needs up to {re.escape(at_most[1])} ETH "
                        rf"\([0-9,]+ gas at up to [0-9.]+ gwei\), {d.account.address} holds 0\.001 ETH: send it at "
                        r"least [0-9.]+ ETH more", line), line

    d.fund(node.rpc_url, 10)
    line = d.fails(EXIT_INPUT)  # stdin is not a terminal, and no --yes
    assert line == "dsq: error: not deploying: no terminal to confirm on; pass --yes to deploy without asking"
    assert "cost: about " in d.last_stdout  # the price is shown before refusing

    line = d.fails(EXIT_CHAIN, "--yes", rpc_url=f"http://127.0.0.1:{free_port()}")
    assert "unreachable" in line
    assert not d.deployment.exists() and not progress_path(d.deployment).exists()

    d.deployment.write_text("{}")
    assert "already exists" in d.fails(EXIT_INPUT, "--yes")


def test_admin_can_be_another_account_and_the_deployer_keeps_no_role(
        node: AnvilNode, deployer: Callable[..., Deployer]) -> None:
    """``--admin`` (a multisig, say): every admin role and the minter role go to it, none to the deployer."""
    d = deployer()
    admin_key = dev_keys(6)[5]
    admin = Account.from_key(admin_key).address
    typo = admin[:2] + "".join(c.swapcase() if c.isalpha() else c for c in admin[2:])  # every letter's case flipped
    bad = [("0x1234", "is not an address"), ("0x" + "g" * 40, "is not an address"),
           (typo, "has a wrong checksum"), ("0x" + "0" * 40, "the zero address")]
    for text, why in bad:
        assert why in d.fails(EXIT_INPUT, "--yes", "--admin", text)
    out = d.ok("--admin", admin.lower(), "--admin-delay", "0", "--yes")  # lower case: any valid spelling
    assert f"admin (every admin role, and the minter of credits): {admin}; the deploying account gets no role" in out
    dep = Deployment.load(d.deployment)
    assert dep.admin == admin and d.progress().admin == admin
    chain = Chain(node.rpc_url)
    token = chain.w3.eth.contract(address=dep.token, abi=artifacts.abi("CreditToken"))  # type: ignore[call-overload]
    market = chain.w3.eth.contract(address=dep.market, abi=artifacts.abi("ProviderRegistry"))  # type: ignore[call-overload]
    admin_role, minter = bytes(32), token.functions.MINTER_ROLE().call()
    for contract, role in ((token, admin_role), (token, minter), (market, admin_role)):
        assert contract.functions.hasRole(role, admin).call()
        assert not contract.functions.hasRole(role, d.account.address).call()
    submit_a_job(node.rpc_url, dep, admin_key)  # the admin mints; a user's job lands
    with pytest.raises(Exception, match="AccessControlUnauthorizedAccount"):
        AdminClient(chain.wallet(d.account.key.to_0x_hex()), dep).mint(admin, Credits(1))
    # Resuming names the admin it started with.
    d.deployment.unlink()
    line = d.fails(EXIT_INPUT, "--yes", "--admin", d.account.address)
    assert f"was started with admin {admin}, not {d.account.address}" in line


def test_the_deployment_file_records_only_a_local_rpc_url() -> None:
    """The file is shared; a provider's URL may carry an API key."""
    assert shareable_rpc_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert shareable_rpc_url("https://eth-sepolia.example.com/v2/SECRETKEY") == ""
    assert shareable_rpc_url("https://user:pw@node.example") == ""


def test_the_code_check_ignores_immutables_only() -> None:
    """Two deployments' code differs in the immutables (addresses, the EIP-712 domain) and nowhere else."""
    with start_anvil() as n:
        chain = Chain(n.rpc_url)
        key = dev_keys(1)[0]
        a, b = deploy(chain.wallet(key)), deploy(chain.wallet(key))
        for name, x, y in (("CreditToken", a.token, b.token), ("JobMarket", a.market, b.market),
                           ("ProviderRegistry", a.registry, b.registry)):
            cx, cy = bytes(chain.w3.eth.get_code(x)), bytes(chain.w3.eth.get_code(y))  # type: ignore[arg-type]
            assert code_difference(name, cx) is None and code_difference(name, cy) is None
            ranges = artifacts.immutable_ranges(name)
            assert (cx != cy) == bool(ranges) and (name != "ProviderRegistry") == bool(ranges)
            if ranges:
                start, _ = ranges[0]
                inside = bytearray(cx)
                inside[start] ^= 0xFF
                assert code_difference(name, bytes(inside)) is None
                outside = bytearray(cx)
                outside[0] ^= 0xFF
                assert "differs from" in str(code_difference(name, bytes(outside)))
        assert "bytes of code" in str(code_difference("JobMarket", bytes(chain.w3.eth.get_code(a.registry))))  # type: ignore[arg-type]
        assert code_difference("JobMarket", b"") == "no code there"
