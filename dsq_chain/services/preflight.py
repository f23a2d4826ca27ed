"""Start-up checks: a service started wrongly says so at once, in one line, before it creates anything.

Each check raises :class:`StartupError` (a :class:`~dsq_chain.errors.InputError`, so the CLI prints it as
one ``dsq: error:`` line with a non-zero exit) naming what is wrong and what to do. They read the chain
and the engine only: call them before a service opens its state directory, so a refused start leaves
nothing behind.

* :func:`check_contracts`: the deployment's market and token addresses hold the market's and the token's
  code on this chain (not nothing, not each other's);
* :func:`check_scheduler`: the scheduler's key holds the scheduler role;
* :func:`check_provider`: the worker's key is a registered provider (pending approval is fine);
* :func:`check_slurm`: a Slurm configuration is given and exists, and the controller answers.
"""

from __future__ import annotations

import os
from pathlib import Path

from dsq_chain.errors import ChainUnavailable, InputError
from dsq_chain.executors.base import ExecutorError, base_env, run_command
from dsq_chain.sdk.chain import Chain, Wallet, node_errors
from dsq_chain.sdk.client import provider_from_view
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.types import ProviderStatus

#: Slurm's own default configuration file, read when neither --slurm-conf nor SLURM_CONF is given.
SLURM_DEFAULT_CONF = Path("/etc/slurm/slurm.conf")


class StartupError(InputError):
    """A service cannot start as configured; the message says what is wrong and how to fix it."""


def check_contracts(chain: Chain, deployment: Deployment) -> None:
    """The market and token addresses of ``deployment`` hold the JobMarket's and the CreditToken's code."""
    where = f"deployment of chain {deployment.chain_id} at {chain.rpc_url}"
    if chain.chain_id != deployment.chain_id:
        raise StartupError(f"{where}: the node is chain {chain.chain_id}, not {deployment.chain_id}: wrong RPC URL?")
    market_code = _code(chain, deployment.market)
    token_code = _code(chain, deployment.token)
    if not market_code:
        raise StartupError(f"{where}: market address {deployment.market} holds no contract code (wrong chain, "
                           "a node restarted without its state, or a stale deployment file?)")
    if not token_code:
        raise StartupError(f"{where}: token address {deployment.token} holds no contract code")
    if market_code == token_code:
        raise StartupError(f"{where}: market address {deployment.market} holds the token's code, not the market's "
                           "(are token and market swapped in the deployment file?)")
    token, market = deployment.contracts(chain)
    for what, probe in (("market", lambda: (market.functions.jobCount().call(),
                                            market.functions.SCHEDULER_ROLE().call())),
                        ("token", lambda: token.functions.decimals().call())):
        try:
            with node_errors(chain.rpc_url):  # the node gone mid-check says so, not "not our contract"
                probe()
        except ChainUnavailable:
            raise
        except Exception as e:  # any revert or undecodable answer: not our contract there
            address = deployment.market if what == "market" else deployment.token
            raise StartupError(f"{where}: {what} address {address} holds a contract that is not the "
                               f"{'JobMarket' if what == 'market' else 'CreditToken'} "
                               f"({type(e).__name__})") from None


def check_scheduler(wallet: Wallet, deployment: Deployment) -> None:
    """``wallet`` may assign jobs: it holds the market's scheduler role."""
    _, market = deployment.contracts(wallet.chain)
    with node_errors(wallet.chain.rpc_url):
        role = market.functions.SCHEDULER_ROLE().call()
        holds = market.functions.hasRole(role, wallet.address).call()
    if not holds:
        raise StartupError(f"scheduler key {wallet.address} does not hold the scheduler role on market "
                           f"{deployment.market}: the admin grants it with `dsq admin grant-scheduler "
                           f"{wallet.address}`")


def check_provider(wallet: Wallet, deployment: Deployment) -> ProviderStatus:
    """``wallet`` is a registered provider (pending, approved or paused); returns its status."""
    _, market = deployment.contracts(wallet.chain)
    with node_errors(wallet.chain.rpc_url):
        view = market.functions.getProvider(wallet.address).call()
    status = provider_from_view(view).status
    if status in (ProviderStatus.NONE, ProviderStatus.REMOVED):
        raise StartupError(f"worker key {wallet.address} is not a registered provider on market "
                           f"{deployment.market}: run `dsq provider register` with this key first")
    if status is ProviderStatus.BANNED:
        raise StartupError(f"worker key {wallet.address} belongs to a banned provider on market {deployment.market}")
    return status


def check_slurm(slurm_conf: Path | None, *, timeout_s: float = 20.0, bin_dir: Path | None = None) -> Path:
    """A Slurm configuration exists (``slurm_conf``, else ``SLURM_CONF``, else Slurm's default) and its
    controller answers ``scontrol ping``; returns the configuration's path."""
    if slurm_conf is not None:
        conf, given = Path(slurm_conf), "--slurm-conf"
    elif os.environ.get("SLURM_CONF"):
        conf, given = Path(os.environ["SLURM_CONF"]), "SLURM_CONF"
    else:
        conf, given = SLURM_DEFAULT_CONF, ""
    if not conf.is_file():
        if not given:
            raise StartupError(f"the slurm executor needs a Slurm configuration: pass --slurm-conf PATH "
                               f"(none given, no SLURM_CONF, no {SLURM_DEFAULT_CONF})")
        raise StartupError(f"{given} {conf}: no such file")
    exe = str(bin_dir / "scontrol") if bin_dir else "scontrol"
    try:
        proc = run_command([exe, "ping"], timeout=timeout_s, env=base_env({"SLURM_CONF": str(conf.resolve())}),
                           check=False)
    except ExecutorError as e:
        raise StartupError(f"Slurm controller of {conf} does not answer: {_one_line(str(e))}") from None
    answer = _one_line(proc.stdout + " " + proc.stderr)
    if proc.returncode != 0 or " is UP" not in proc.stdout:
        raise StartupError(f"Slurm controller of {conf} does not answer: {answer or f'exit {proc.returncode}'}")
    return conf


def _code(chain: Chain, address: str) -> bytes:
    with node_errors(chain.rpc_url):  # a link reset here is the node's, not a file's (the CLI said "cannot read")
        return bytes(chain.w3.eth.get_code(address))  # type: ignore[arg-type]


def _one_line(text: str) -> str:
    return " ".join(text.split())


