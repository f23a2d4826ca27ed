"""A service started wrongly says so at once: one line, a non-zero exit, nothing left behind.

Through the real ``dsq`` entry point against a real Anvil; the Slurm cases use a real ``scontrol`` (installed
by tests/slurm_cluster.py's apt fixture) pointed at a controller that does not run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from eth_account import Account

from dsq_chain import artifacts
from dsq_chain.errors import ChainUnavailable
from dsq_chain.sdk.anvil import free_port
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.services import preflight
from tests.grid import Grid
from tests.slurm_cluster import SlurmUnavailable, ensure_slurm_installed
from tests.test_cli import EXIT_INPUT, Cli

EXIT_ENGINE = 6


@pytest.fixture
def cli(grid: Grid, tmp_path: Path, keys: list[str]) -> Cli:
    return Cli(grid, tmp_path, keys)


def quick_failure(cli: Cli, code: int, *args: str, key: str, expected: str) -> None:
    t0 = time.monotonic()
    line = cli.fails(code, *args, key=key, timeout=60)
    assert expected in line, line
    assert time.monotonic() - t0 < 30, "the service did not refuse at once"


def test_scheduler_key_without_the_role_is_refused(cli: Cli) -> None:
    quick_failure(cli, EXIT_INPUT, "scheduler", "run", key=cli.keys[2], expected="does not hold the scheduler role")


def test_scheduler_with_a_peer_that_is_not_an_address_is_refused(cli: Cli) -> None:
    quick_failure(cli, EXIT_INPUT, "scheduler", "run", "--peer", "0x12", key=cli.keys[1],
                  expected="peer '0x12' is not an address")


def test_worker_key_that_is_not_a_registered_provider_is_refused_and_leaves_nothing(cli: Cli) -> None:
    state = cli.tmp / "worker"
    quick_failure(cli, EXIT_INPUT, "worker", "run", "--state-dir", str(state), key=cli.keys[12],
                  expected="is not a registered provider")
    assert not state.exists(), "a refused start left its state directory behind"


@pytest.mark.parametrize("wrong", ["token", "nothing"])
def test_a_deployment_whose_market_holds_no_market_is_refused(cli: Cli, wrong: str) -> None:
    data = json.loads(cli.deployment.read_text())
    data["market"] = data["token"] if wrong == "token" else Account.create().address
    cli.deployment.write_text(json.dumps(data))
    expected = "holds the token's code" if wrong == "token" else "holds no contract code"
    quick_failure(cli, EXIT_INPUT, "scheduler", "run", key=cli.keys[1], expected=expected)
    quick_failure(cli, EXIT_INPUT, "worker", "run", "--state-dir", str(cli.tmp / "w"), key=cli.keys[5],
                  expected=expected)
    assert not (cli.tmp / "w").exists()


def test_worker_with_a_missing_slurm_conf_is_refused(cli: Cli) -> None:
    state = cli.tmp / "worker"
    quick_failure(cli, EXIT_INPUT, "worker", "run", "--executor", "slurm", "--slurm-conf", str(cli.tmp / "nope.conf"),
                  "--state-dir", str(state), key=cli.keys[5], expected="nope.conf: no such file")
    assert not state.exists()


def dead_controller_conf(tmp: Path) -> Path:
    """A slurm.conf naming a controller on a loopback port nobody listens on."""
    conf = tmp / "slurm.conf"
    conf.write_text(f"ClusterName=dead\nSlurmctldHost=localhost\nSlurmctldPort={free_port()}\nAuthType=auth/none\n"
                    "CredType=cred/none\nMessageTimeout=2\nNodeName=localhost CPUs=1 State=UNKNOWN\n"
                    "PartitionName=p Nodes=localhost Default=YES\n")
    return conf


@pytest.fixture
def scontrol() -> None:
    try:
        ensure_slurm_installed()
    except SlurmUnavailable as e:
        pytest.skip(str(e))


@pytest.mark.usefixtures("scontrol")
def test_worker_with_a_slurm_controller_that_does_not_answer_is_refused(cli: Cli) -> None:
    state = cli.tmp / "worker"
    conf = dead_controller_conf(cli.tmp)
    quick_failure(cli, EXIT_INPUT, "worker", "run", "--executor", "slurm", "--slurm-conf", str(conf),
                  "--state-dir", str(state), key=cli.keys[5], expected="does not answer")
    assert not state.exists()
    with pytest.raises(preflight.StartupError, match="does not answer"):
        preflight.check_slurm(conf)


@pytest.mark.usefixtures("scontrol")
def test_provider_register_on_slurm_with_the_controller_down_is_one_line(cli: Cli) -> None:
    conf = dead_controller_conf(cli.tmp)
    quick_failure(cli, EXIT_ENGINE, "provider", "register", "--price-cpu", "0.001", "--executor", "slurm",
                  "--slurm-conf", str(conf), "--state-dir", str(cli.tmp / "w"), key=cli.keys[12], expected="sinfo")


def test_a_well_started_service_passes_every_check(grid: Grid) -> None:
    preflight.check_contracts(grid.chain, grid.deployment)
    preflight.check_scheduler(grid.scheduler.wallet, grid.deployment)
    assert preflight.check_provider(grid.pending.wallet, grid.deployment).name == "PENDING"


def test_a_node_lost_in_the_middle_of_the_check_is_said_to_be_unreachable(grid: Grid,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The node answers the first reads, then the link drops (an RPC cut as a service restarts): the check says
    the node is unreachable, not that the token address holds some other contract."""
    gone = Chain(f"http://127.0.0.1:{free_port()}", timeout=2)
    monkeypatch.setattr(grid.chain, "rpc_url", gone.rpc_url)
    monkeypatch.setattr(Deployment, "contracts", lambda self, chain: (
        gone.w3.eth.contract(address=self.token, abi=artifacts.abi("CreditToken")),
        gone.w3.eth.contract(address=self.market, abi=artifacts.abi("JobMarket"))))
    with pytest.raises(ChainUnavailable, match="unreachable"):
        preflight.check_contracts(grid.chain, grid.deployment)
    for check in (preflight.check_scheduler, preflight.check_provider):
        with pytest.raises(ChainUnavailable, match="unreachable"):
            check(grid.scheduler.wallet, grid.deployment)


def test_a_node_lost_before_the_code_reads_is_said_to_be_unreachable(grid: Grid,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain id is known, then the link drops before the market's code is read: ChainUnavailable (the
    service exits with the chain's code and is restarted), not a transport error the CLI took for a file's
    ("cannot read a file: Connection reset by peer", exit 2: seen in the soak)."""
    gone = Chain(f"http://127.0.0.1:{free_port()}", timeout=2)
    monkeypatch.setattr(gone, "_chain_id", grid.chain.chain_id)
    with pytest.raises(ChainUnavailable, match="unreachable"):
        preflight.check_contracts(gone, grid.deployment)
