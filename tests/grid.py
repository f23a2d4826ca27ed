"""A deployed grid with named actors, used by the tests (and nothing else)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from typing import Any

from dsq_chain.money import Credits
from dsq_chain.sdk.chain import Chain, Wallet
from dsq_chain.sdk.client import AdminClient, GridClient, ProviderClient, SchedulerClient
from dsq_chain.sdk.deployment import Deployment, deploy
from dsq_chain.sdk.events import ChainEvent, snake
from dsq_chain.types import JobStatus, LabelConstraint, Prices, Resources
from dsq_chain.workloads import workflow as wfmod


def workflow_for(res: Resources, labels: tuple[LabelConstraint, ...] = ()) -> wfmod.Workflow:
    """A one-step workflow asking for exactly ``res`` (its memory a multiple of its cpus) and ``labels``."""
    if res.cpus < 1 or res.mem_mb % res.cpus:
        raise ValueError(f"no workflow asks for {res}: memory must be a multiple of the cpus")
    doc = {"resources": {"tasks": 1, "cpusPerTask": res.cpus, "memPerCpu": res.mem_mb // res.cpus, "gpus": res.gpus},
           "labels": [str(c) for c in labels], "steps": [{"name": "main", "run": {"command": "true"}}]}
    return wfmod.loads(json.dumps(doc))


SMALL = Resources(cpus=2, gpus=0, mem_mb=1024)
#: Canonical bytes of a workflow asking for SMALL (what the contract-level tests submit).
WORKFLOW = workflow_for(SMALL).canonical()
CPU_PRICES = Prices.from_units(per_cpu_minute=1_000, per_gpu_minute=0, per_gb_minute=100)
GPU_PRICES = Prices.from_units(per_cpu_minute=2_000, per_gpu_minute=50_000, per_gb_minute=100)
#: Rate of SMALL on the cpu provider: 2*1000 + 1024*100/1024 = 2100 units/min.
SMALL_RATE = CPU_PRICES.rate_for(SMALL)
CREDITS = Credits(10)
MAX_RATE = Credits(1)


@dataclass
class Grid:
    """Admin, scheduler, users and providers on one deployment.

    ``cpu`` (8 cpus, 16 GB, label zone=eu) and ``gpu`` (16 cpus, 2 gpus, 64 GB, gpu.model=A100,
    gpu.mem=80) are approved; ``spare`` is approved with nothing assigned; ``pending`` is
    registered but not approved.
    """

    chain: Chain
    deployment: Deployment
    admin: AdminClient
    scheduler: SchedulerClient
    users: list[GridClient]
    cpu: ProviderClient
    gpu: ProviderClient
    spare: ProviderClient
    pending: ProviderClient
    stranger: GridClient
    wallets: list[Wallet] = field(default_factory=list)

    @property
    def user(self) -> GridClient:
        return self.users[0]

    @property
    def accounts(self) -> list[str]:
        return [w.address for w in self.wallets]

    def reset_nonces(self) -> None:
        for w in self.wallets:
            w.reset_nonce()

    # -- driving jobs ----------------------------------------------------------------------------
    def submit(
        self,
        user: GridClient | None = None,
        *,
        resources: Resources = SMALL,
        credits: int = CREDITS,
        max_rate: int = MAX_RATE,
        labels: tuple[LabelConstraint, ...] = (),
        count: int = 1,
    ) -> int:
        """Submits a job asking for ``resources`` and ``labels`` (amounts: Credits, or ints of base units),
        skipping the feasibility check: contract tests submit jobs no provider can take on purpose."""
        ids = (user or self.user).submit(
            workflow_for(resources, labels), credits=Credits(units=int(credits)),
            max_rate=Credits(units=int(max_rate)), count=count, force=True,
        )
        return ids[0]

    def job_in(self, status: JobStatus, provider: ProviderClient | None = None, **submit_kw: object) -> int:
        """A fresh job driven to ``status`` (on ``provider``, default the cpu provider)."""
        prov = provider or self.cpu
        job_id = self.submit(**submit_kw)  # type: ignore[arg-type]
        if status is JobStatus.PENDING:
            return job_id
        self.scheduler.assign(job_id, prov.address)
        if status is JobStatus.META_SCHEDULED:
            return job_id
        prov.claim(job_id)
        if status is JobStatus.SCHEDULED:
            return job_id
        prov.start(job_id)
        if status is JobStatus.RUNNING:
            return job_id
        if status is JobStatus.FINISHED:
            prov.finish(job_id, 0)
        elif status is JobStatus.FAILED:
            prov.finish(job_id, 3)
        elif status is JobStatus.OUT_OF_CREDITS:
            job = prov.job(job_id)
            self.chain.increase_time(job.escrow * 60 // job.rate + 60)  # past what the escrow buys
            prov.report_out_of_credits(job_id)
        elif status is JobStatus.CANCELED:
            submit_kw.get("user", self.user).cancel(job_id)  # type: ignore[attr-defined]
        elif status is JobStatus.PANICKED:
            prov.panic(job_id)
        return job_id


def submit_unchecked(
    user: GridClient, raw: bytes, resources: Resources, *, credits: int = CREDITS, max_rate: int = MAX_RATE,
    labels: tuple[LabelConstraint, ...] = (), count: int = 1, providers: tuple[str, ...] | list[str] = (),
    exclude: tuple[str, ...] | list[str] = (), external_ref: bytes = b"",
) -> list[int]:
    """Submits through the contract directly, as a client other than this SDK could: the workflow bytes,
    resources and labels need not agree (the SDK refuses that). Amounts in base units."""
    from dsq_chain.sdk.client import placement_labels
    from dsq_chain.sdk.receipts import submission_of
    from dsq_chain.workloads.labels import on_chain

    user.wallet.transact(user.token.functions.approve(user.market.address, int(credits) * count))
    request = (resources.cpus, resources.gpus, resources.mem_mb, int(max_rate), int(credits), resources.disk_gb,
               external_ref.rjust(32, b"\0"))
    chain_labels = on_chain(labels) + placement_labels(providers, exclude)
    receipt = user.wallet.transact(user.market.functions.submit(request, chain_labels, raw, count))
    return list(submission_of(receipt))


def build_grid(chain: Chain, keys: list[str]) -> Grid:
    """Deploys and sets up the standard grid (accounts 0..9 of Anvil's dev keys)."""
    wallets = [chain.wallet(k) for k in keys[:10]]
    dep = deploy(wallets[0], claim_timeout=300)
    admin = AdminClient(wallets[0], dep)
    scheduler = SchedulerClient(wallets[1], dep)
    users = [GridClient(w, dep) for w in wallets[2:5]]
    cpu, gpu, spare, pending = (ProviderClient(w, dep) for w in wallets[5:9])
    stranger = GridClient(wallets[9], dep)
    admin.grant_scheduler(scheduler.address)
    for u in [*users, stranger]:
        admin.mint(u.address, Credits(1_000))
    cpu.register(Resources(8, 0, 16_384), CPU_PRICES, {"zone": "eu"})
    gpu.register(Resources(16, 2, 65_536), GPU_PRICES, {"gpu.model": "A100", "gpu.mem": "80"})
    spare.register(Resources(4, 0, 8_192), CPU_PRICES, {})
    pending.register(Resources(4, 0, 8_192), CPU_PRICES, {})
    for p in (cpu, gpu, spare):
        admin.approve(p.address)
    return Grid(chain, dep, admin, scheduler, users, cpu, gpu, spare, pending, stranger, wallets)


def conservation_gap(grid: Grid) -> int:
    """Token balance of the market minus (sum of escrows + sum of internal balances); must be 0."""
    market = grid.deployment.market
    held = grid.user.token_balance(market)
    escrows = 0
    accounts = set(grid.accounts)
    n = grid.user.job_count()
    for start in range(1, n + 1, 500):
        for view in grid.user.market.functions.getJobs(start, 500).call():
            escrows += int(view[4])
            accounts.add(view[1])  # every owner
    accounts.update(p.address for p in grid.user.providers())  # every provider, even one made in a test
    balances = sum(grid.user.credits(a) for a in accounts)
    owed = int(grid.user.market.functions.owed().call())
    assert owed == escrows + balances, f"the market counts {owed} owed, escrows + balances are {escrows + balances}"
    return int(held - escrows - balances)


def abi_args(ev: ChainEvent) -> dict[str, Any]:
    """An event record's values under the ABI's own names (structs as dicts), for checks written
    against the contract's ABI rather than the SDK's spelling."""
    from dsq_chain import artifacts

    item = next(i for i in artifacts.abi("JobMarket") if i["type"] == "event" and i["name"] == ev.name)

    def plain(inp: dict[str, Any], value: Any) -> Any:
        typ = str(inp["type"])
        if typ.endswith("]"):
            element = dict(inp, type=typ[: typ.rindex("[")])
            return tuple(plain(element, v) for v in value)
        if typ == "tuple":
            return {c["name"]: plain(c, v) for c, v in zip(inp["components"], _values(value), strict=True)}
        return value

    return {i["name"]: plain(i, getattr(ev, snake(i["name"]))) for i in item["inputs"]}


def _values(record: Any) -> tuple[Any, ...]:
    """A struct record's values in field order (dataclass or named tuple)."""
    if isinstance(record, tuple):
        return tuple(record)
    return tuple(getattr(record, f.name) for f in fields(record))


def web3_args(log: dict[str, Any]) -> dict[str, Any]:
    """web3's own decoding of a market log (the reference the SDK's decoder is checked against),
    as plain values: structs as dicts, arrays as tuples, addresses checksummed."""
    from eth_utils.abi import event_abi_to_log_topic
    from hexbytes import HexBytes
    from web3 import Web3
    from web3._utils.events import get_event_data

    from dsq_chain import artifacts

    topic = bytes(HexBytes(log["topics"][0]))
    item = next(i for i in artifacts.abi("JobMarket")
                if i["type"] == "event" and bytes(event_abi_to_log_topic(i)) == topic)  # type: ignore[arg-type]

    def plain(v: Any) -> Any:
        if isinstance(v, (bytes, bytearray)):
            return bytes(v)
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return tuple(plain(x) for x in v)
        return v

    data = get_event_data(Web3().codec, item, log)  # type: ignore[arg-type]
    return {k: plain(v) for k, v in data["args"].items()}
