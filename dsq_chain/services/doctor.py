"""``dsq provider doctor``: a running provider checked end to end, each check with the fix when it fails.

Checks, in order (a check that needs an earlier one that failed is reported as skipped):
key, RPC node, deployment, registration, approval, engine, disk, clock skew against chain time, worker
heartbeat (the worker's ``heartbeat.json``) and, when a metrics URL is given, the worker's metrics endpoint.
"""

from __future__ import annotations

import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from dsq_chain.errors import DsqError
from dsq_chain.executors import Executor, ExecutorError
from dsq_chain.sdk.chain import Chain
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.services.heartbeat import HEARTBEAT_FILE, read_heartbeat
from dsq_chain.types import ProviderStatus

__all__ = ["Check", "DoctorLimits", "diagnose"]


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``ok`` True (passed), False (failed) or None (skipped)."""

    name: str
    ok: bool | None
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class DoctorLimits:
    """Thresholds of the checks."""

    min_free_gb: int = 1
    max_clock_skew_s: float = 30.0
    """Largest distance allowed between this machine's clock and the newest block's time, where the chain is
    ahead; a chain behind by more than :attr:`max_block_age_s` is reported as stalled."""
    max_block_age_s: float = 600.0
    max_heartbeat_age_s: float = 30.0


def diagnose(
    *,
    private_key: Callable[[], str],
    deployment: Callable[[], Deployment],
    rpc_url: Callable[[Deployment], str],
    executor: Callable[[], Executor],
    state_dir: Path,
    metrics_url: str | None = None,
    limits: DoctorLimits = DoctorLimits(),
    now: Callable[[], float] = time.time,
) -> list[Check]:
    """Runs every check; each argument is a thunk so that a failure is a check's failure, not an exception."""
    checks: list[Check] = []
    address = None
    key = None
    try:
        key = private_key()
        address = str(Account.from_key(key).address)
        checks.append(Check("key", True, f"provider account {address}"))
    except (DsqError, ValueError, OSError) as e:
        checks.append(Check("key", False, str(e), "set DSQ_KEYSTORE and DSQ_KEYSTORE_PASSWORD (the unit's environment "
                                                   "file holds both) or pass --keystore"))
    dep = chain = None
    try:
        dep = deployment()
    except (DsqError, ValueError, OSError) as e:
        checks.append(Check("deployment", False, str(e), "pass --deployment FILE (the network's deployment file)"))
    if dep is not None:
        url = ""
        try:
            url = rpc_url(dep)
            chain = Chain(url, timeout=10)
            cid = chain.chain_id
            if cid != dep.chain_id:
                checks.append(Check("rpc", False, f"{url} serves chain {cid}, the deployment's is {dep.chain_id}",
                                    "point --rpc-url (or rpc_url in the config) at a node of the deployment's chain"))
                chain = None
            else:
                checks.append(Check("rpc", True, f"{url}: chain {cid}, block {chain.block_number()}"))
        except (DsqError, ValueError, OSError) as e:
            checks.append(Check("rpc", False, f"{url or 'RPC'}: {e}", "start the node or fix --rpc-url / DSQ_RPC_URL"))
            chain = None
    if chain is not None and dep is not None:
        code = chain.call_rpc("eth_getCode", [dep.market, "latest"])
        if code in (None, "0x", "0x0"):
            checks.append(Check("deployment", False, f"no contract at {dep.market} on this chain",
                                "use the deployment file of this network"))
            chain = None
        else:
            checks.append(Check("deployment", True, f"market {dep.market}"))
    _registration(checks, chain, dep, key, address)
    checks.append(_engine(executor))
    checks.append(_disk(state_dir, limits))
    checks.append(_clock(chain, limits, now))
    checks.append(_heartbeat(state_dir, address, limits, now))
    if metrics_url:
        checks.append(_metrics(metrics_url))
    return checks


def _registration(checks: list[Check], chain: Chain | None, dep: Deployment | None, key: str | None,
                  address: str | None) -> None:
    if chain is None or dep is None or key is None or address is None:
        checks.append(Check("registration", None, "skipped: needs the key and a reachable chain"))
        checks.append(Check("approval", None, "skipped: needs the registration"))
        return
    info = ProviderClient(chain.wallet(key), dep).info()
    if info.status in (ProviderStatus.NONE, ProviderStatus.REMOVED):
        checks.append(Check("registration", False, f"{address} is not registered",
                            "run `dsq provider init` (it registers what the self-check measured)"))
        checks.append(Check("approval", None, "skipped: not registered"))
        return
    t = info.total
    checks.append(Check("registration", True, f"provider #{info.id}: {t.cpus} cpus, {t.gpus} gpus, {t.mem_mb} MB"))
    if info.status is ProviderStatus.BANNED:
        checks.append(Check("approval", False, "banned", "ask the grid's admin why; a banned provider gets no jobs"))
    elif info.status is ProviderStatus.PENDING:
        checks.append(Check("approval", False, "registered, awaiting the admin's approval",
                            f"ask the admin to run `dsq admin approve {address}`"))
    elif info.paused:
        checks.append(Check("approval", False, "approved but paused: no new jobs", "run `dsq provider resume`"))
    else:
        checks.append(Check("approval", True, "approved and taking jobs"))


def _engine(executor: Callable[[], Executor]) -> Check:
    try:
        ex = executor()
        cap = ex.capacity()
    except (ExecutorError, DsqError, ValueError, OSError) as e:
        return Check("engine", False, str(e), "for Slurm: check SLURM_CONF and that `sinfo` works as this user")
    if cap.cpus <= 0:
        return Check("engine", False, f"the {ex.name} engine reports no usable cpus (all nodes down/drained?)",
                     "resume the nodes (`scontrol update NodeName=... State=RESUME`)")
    return Check("engine", True, f"{ex.name}: {cap.cpus} cpus, {cap.gpus} gpus, {cap.mem_mb} MB usable")


def _disk(state_dir: Path, limits: DoctorLimits) -> Check:
    probe = state_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free_gb = shutil.disk_usage(probe).free / 10**9
    if free_gb < limits.min_free_gb:
        return Check("disk", False, f"{free_gb:.1f} GB free under {state_dir}",
                     f"free at least {limits.min_free_gb} GB (old job folders live in {state_dir}/executor/jobs)")
    return Check("disk", True, f"{free_gb:.0f} GB free under {state_dir}")


def _clock(chain: Chain | None, limits: DoctorLimits, now: Callable[[], float]) -> Check:
    if chain is None:
        return Check("clock", None, "skipped: needs a reachable chain")
    skew = now() - chain.timestamp()  # > 0: the newest block is older than our clock says
    if skew < -limits.max_clock_skew_s:
        return Check("clock", False, f"this machine's clock is {-skew:.0f} s behind chain time",
                     "sync the clock (systemd-timesyncd or chrony): jobs' time limits are computed from chain time")
    if skew > limits.max_block_age_s:
        return Check("clock", False, f"the newest block is {skew:.0f} s older than this machine's clock",
                     "the node is stalled or syncing, or this clock runs ahead: check both")
    return Check("clock", True, f"chain time is {abs(skew):.0f} s {'behind' if skew >= 0 else 'ahead of'} this clock")


def _heartbeat(state_dir: Path, address: str | None, limits: DoctorLimits, now: Callable[[], float]) -> Check:
    beat = read_heartbeat(state_dir)
    if beat is None:
        return Check("worker", False, f"no {HEARTBEAT_FILE} in {state_dir}: the worker is not running here",
                     "start it: `systemctl enable --now dsq-worker` (the unit `dsq provider init` wrote)")
    if address is not None and beat.address != address:
        return Check("worker", False, f"the worker in {state_dir} runs for {beat.address}, not {address}",
                     "point --state-dir at this provider's worker")
    age = beat.age(now())
    if age > limits.max_heartbeat_age_s:
        return Check("worker", False, f"last heartbeat {age:.0f} s ago (pid {beat.pid})",
                     "the worker is stopped or hung: `journalctl -u dsq-worker`, then restart it")
    if not beat.chain_up:
        return Check("worker", False, "the worker runs but cannot reach the chain", "check its RPC URL and the node")
    return Check("worker", True, f"alive (pid {beat.pid}, heartbeat {age:.0f} s ago)")


def _metrics(url: str) -> Check:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = resp.read().decode(errors="replace")
    except (urllib.error.URLError, OSError) as e:
        return Check("metrics", False, f"{url}: {e}", "start the worker with --metrics-port")
    if "dsq_worker_jobs" not in body:
        return Check("metrics", False, f"{url} serves no dsq_worker_* metrics", "is this the worker's port?")
    return Check("metrics", True, f"{url} serves the worker's metrics")
