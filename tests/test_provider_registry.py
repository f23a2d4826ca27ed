"""The provider registry: registration, hardware, prices, labels, pause, and the admin's approve/ban/remove.

The stranger (an account of the grid with no role) plays the newcomer that registers. Every refused
call must leave the provider's record as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from web3.logs import DISCARD

from dsq_chain import errors
from dsq_chain.sdk.chain import Call
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.types import JobStatus, Prices, ProviderStatus, Resources
from dsq_chain.workloads.labels import encode_key, encode_value, on_chain, parse_constraint
from tests.grid import CPU_PRICES, SMALL, SMALL_RATE, Grid

S = JobStatus
HW = Resources(4, 1, 8_192)
PRICES = Prices.from_units(500, 20_000, 50)
ZERO_WORD = bytes(32)


@pytest.fixture
def newcomer(grid: Grid) -> ProviderClient:
    """The stranger's account as a provider client (not registered yet)."""
    return ProviderClient(grid.stranger.wallet, grid.deployment)


def _label(grid: Grid, provider: str, key: str) -> bytes:
    return bytes(grid.user.market.functions.labelOf(provider, encode_key(key)).call())


@contextmanager
def unchanged(grid: Grid, *providers: str) -> Iterator[None]:
    """Asserts the providers' records (and the provider count) are the same afterwards."""
    before = [grid.user.provider(p) for p in providers], grid.user.market.functions.providerCount().call()
    yield
    assert ([grid.user.provider(p) for p in providers], grid.user.market.functions.providerCount().call()) == before


def _direct(client: Any, fn: Any) -> Any:
    """A mined transaction, bypassing the SDK's checks."""
    return client.wallet.transact(Call(fn, gas=1_000_000))


# ---------------------------------------------------------------------------------- registration
def test_register_records_hardware_prices_and_labels(grid: Grid, newcomer: ProviderClient) -> None:
    count0 = grid.user.market.functions.providerCount().call()
    newcomer.register(HW, PRICES, {"zone": "us", "gpu.model": "T4", "gpu.mem": "16"})
    info = newcomer.info()
    assert info.status is ProviderStatus.PENDING and not info.paused
    assert (info.id, info.total, info.free, info.prices) == (count0 + 1, HW, HW, PRICES)
    assert grid.user.market.functions.providerAt(info.id).call() == newcomer.address
    assert _label(grid, newcomer.address, "zone") == encode_value("us")
    assert _label(grid, newcomer.address, "gpu.mem") == encode_value("16")
    assert grid.user.market.functions.quote(newcomer.address, 2, 1, 2_048).call() == PRICES.rate_for(
        Resources(2, 1, 2_048)
    )


def test_a_pending_provider_gets_jobs_only_once_approved(grid: Grid, newcomer: ProviderClient) -> None:
    newcomer.register(HW, PRICES)
    job_id = grid.submit()
    with pytest.raises(errors.ProviderNotApproved):
        grid.scheduler.assign(job_id, newcomer.address)
    grid.admin.approve(newcomer.address)
    assert newcomer.info().status is ProviderStatus.APPROVED
    grid.scheduler.assign(job_id, newcomer.address)
    assert grid.user.job(job_id).rate == PRICES.rate_for(SMALL)
    assert newcomer.info().free == HW - SMALL


@pytest.mark.parametrize("who", ["pending", "approved", "banned"])
def test_duplicate_registration(grid: Grid, who: str) -> None:
    if who == "banned":
        grid.admin.ban(grid.spare.address)
    provider = {"pending": grid.pending, "approved": grid.cpu, "banned": grid.spare}[who]
    with unchanged(grid, provider.address), pytest.raises(errors.ProviderAlreadyRegistered) as info:
        provider.register(HW, PRICES)
    assert info.value.args_dict["provider"] == provider.address


def test_zero_cpu_price(grid: Grid, newcomer: ProviderClient) -> None:
    free = Prices.from_units(0, 10, 10)
    with unchanged(grid, newcomer.address, grid.cpu.address):
        with pytest.raises(errors.InputError):
            newcomer.register(HW, free)
        with pytest.raises(errors.InputError):
            grid.cpu.update_prices(free)
        f = newcomer.market.functions
        with pytest.raises(errors.ZeroCpuPrice):
            _direct(newcomer, f.registerProvider((4, 1, 8_192, 0, 0), (0, 10, 10), [], []))
        with pytest.raises(errors.ZeroCpuPrice):
            _direct(grid.cpu, f.updatePrices((0, 10, 10)))


@pytest.mark.parametrize("hw", [(0, 0, 1024), (4, 0, 0)], ids=["zero_cpus", "zero_memory"])
def test_invalid_hardware(grid: Grid, newcomer: ProviderClient, hw: tuple[int, int, int]) -> None:
    with unchanged(grid, newcomer.address, grid.cpu.address):
        with pytest.raises(errors.InputError):
            newcomer.register(Resources(*hw), PRICES)
        with pytest.raises(errors.InvalidHardware):
            _direct(newcomer, newcomer.market.functions.registerProvider((*hw, 0, 0), (1, 0, 0), [], []))
        with pytest.raises(errors.InvalidHardware):
            _direct(grid.cpu, grid.cpu.market.functions.updateHardware((*hw, 0, 0)))


@pytest.mark.parametrize("call", ["updateHardware", "updatePrices", "setLabels", "pause", "resume"])
def test_unregistered_account_cannot_update(grid: Grid, newcomer: ProviderClient, call: str) -> None:
    f = newcomer.market.functions
    fn = {
        "updateHardware": lambda: f.updateHardware((4, 0, 1024, 0, 0)),
        "updatePrices": lambda: f.updatePrices((1, 0, 0)),
        "setLabels": lambda: f.setLabels(["zone"], [encode_value("eu")]),
        "pause": lambda: f.pause(),
        "resume": lambda: f.resume(),
    }[call]()
    with unchanged(grid, newcomer.address), pytest.raises(errors.ProviderNotRegistered):
        _direct(newcomer, fn)


# ---------------------------------------------------------------------------------- hardware
def test_update_hardware_grows_and_shrinks_around_what_is_in_use(grid: Grid) -> None:
    job_id = grid.job_in(S.RUNNING)  # holds 2 cpus, 1024 MB of the cpu provider (8 cpus, 16 GB)
    grid.cpu.update_hardware(Resources(32, 0, 65_536))
    assert (grid.cpu.info().total, grid.cpu.info().free) == (Resources(32, 0, 65_536), Resources(30, 0, 64_512))
    for too_small in (Resources(1, 0, 65_536), Resources(32, 0, 1_023)):
        with unchanged(grid, grid.cpu.address), pytest.raises(errors.CapacityInUse) as info:
            grid.cpu.update_hardware(too_small)
        assert tuple(info.value.args_dict["inUse"]) == (2, 0, 1_024, 0, 0)
    grid.cpu.update_hardware(SMALL)  # exactly what is in use
    assert (grid.cpu.info().total, grid.cpu.info().free) == (SMALL, Resources(0, 0, 0))
    grid.cpu.finish(job_id, 0)
    assert grid.cpu.info().free == SMALL


def test_gpus_in_use_cannot_be_shrunk_away(grid: Grid) -> None:
    grid.job_in(S.META_SCHEDULED, grid.gpu, resources=Resources(1, 2, 1_024))
    with unchanged(grid, grid.gpu.address), pytest.raises(errors.CapacityInUse):
        grid.gpu.update_hardware(Resources(16, 1, 65_536))


# ---------------------------------------------------------------------------------- prices
def test_update_prices_applies_to_new_assignments(grid: Grid) -> None:
    held = grid.job_in(S.META_SCHEDULED)
    new = Prices.from_units(3_000, 0, 200)
    grid.cpu.update_prices(new)
    assert grid.cpu.info().prices == new
    assert grid.user.market.functions.quote(grid.cpu.address, 2, 0, 1_024).call() == new.rate_for(SMALL)
    assert grid.user.job(held).rate == SMALL_RATE  # snapshotted
    fresh = grid.job_in(S.META_SCHEDULED)
    assert grid.user.job(fresh).rate == new.rate_for(SMALL) == 6_200


# ---------------------------------------------------------------------------------- labels
def test_set_and_remove_labels(grid: Grid) -> None:
    assert _label(grid, grid.cpu.address, "zone") == encode_value("eu")
    grid.cpu.set_labels({"rack": "r7", "cores.fast": "16"}, remove=["zone"])
    assert _label(grid, grid.cpu.address, "rack") == encode_value("r7")
    assert _label(grid, grid.cpu.address, "cores.fast") == encode_value("16")
    assert _label(grid, grid.cpu.address, "zone") == ZERO_WORD
    # the contract now judges jobs by the new labels
    zone_eu, fast = parse_constraint("zone == eu"), parse_constraint("cores.fast >= 8")
    job_id = grid.submit(labels=(zone_eu,))
    with pytest.raises(errors.LabelMismatch):
        grid.scheduler.assign(job_id, grid.cpu.address, on_chain([zone_eu]))
    job_id = grid.submit(labels=(fast,))
    grid.scheduler.assign(job_id, grid.cpu.address, on_chain([fast]))
    assert grid.user.job(job_id).status is S.META_SCHEDULED


def test_label_arrays_must_match_and_are_bounded(grid: Grid) -> None:
    f = grid.cpu.market.functions
    with pytest.raises(errors.LengthMismatch):
        _direct(grid.cpu, f.setLabels(["a", "b"], [encode_value("1")]))
    keys = [f"k{i}" for i in range(33)]
    with pytest.raises(errors.TooManyLabels) as info:
        _direct(grid.cpu, f.setLabels(keys, [encode_value("1")] * 33))
    assert (info.value.args_dict["count"], info.value.args_dict["max"]) == (33, 32)
    assert _label(grid, grid.cpu.address, "k0") == ZERO_WORD
    grid.cpu.set_labels({k: "1" for k in keys[:32]})  # the limit itself is fine
    assert _label(grid, grid.cpu.address, "k31") == encode_value("1")


# ---------------------------------------------------------------------------------- pause
def test_pause_and_resume(grid: Grid) -> None:
    running = grid.job_in(S.RUNNING)
    grid.cpu.pause()
    assert grid.cpu.info().paused and grid.cpu.info().status is ProviderStatus.APPROVED
    job_id = grid.submit()
    with pytest.raises(errors.ProviderIsPaused):
        grid.scheduler.assign(job_id, grid.cpu.address)
    grid.cpu.finish(running, 0)  # current jobs go on
    assert grid.user.job(running).status is S.FINISHED
    grid.cpu.resume()
    assert not grid.cpu.info().paused
    grid.scheduler.assign(job_id, grid.cpu.address)
    assert grid.user.job(job_id).status is S.META_SCHEDULED


# ---------------------------------------------------------------------------------- admin
@pytest.mark.parametrize("action", ["approveProvider", "banProvider", "removeProvider"])
@pytest.mark.parametrize("who", ["scheduler", "provider_itself", "stranger"])
def test_only_the_admin_approves_bans_removes(grid: Grid, action: str, who: str) -> None:
    target = grid.pending if action == "approveProvider" else grid.spare
    caller = {"scheduler": grid.scheduler, "provider_itself": target, "stranger": grid.stranger}[who]
    fn = getattr(caller.market.functions, action)(target.address)
    with unchanged(grid, target.address), pytest.raises(errors.AccessControlUnauthorizedAccount) as info:
        caller.wallet.transact(fn)
    assert info.value.args_dict["account"] == caller.address


@pytest.mark.parametrize("action", ["approve", "ban", "remove"])
def test_admin_actions_need_a_registered_provider(grid: Grid, action: str) -> None:
    with pytest.raises(errors.ProviderNotRegistered):
        getattr(grid.admin, action)(grid.stranger.address)


def test_ban_stops_assignments_and_claims_but_not_running_jobs(grid: Grid) -> None:
    running = grid.job_in(S.RUNNING)
    assigned = grid.job_in(S.META_SCHEDULED)
    pending = grid.submit()
    grid.admin.ban(grid.cpu.address)
    assert grid.cpu.info().status is ProviderStatus.BANNED
    with pytest.raises(errors.ProviderNotApproved):
        grid.scheduler.assign(pending, grid.cpu.address)
    with pytest.raises(errors.ProviderNotApproved):
        grid.cpu.claim(assigned)
    grid.chain.increase_time(60)
    earned0 = grid.cpu.credits()
    grid.cpu.finish(running, 0)  # the work done is still paid
    assert grid.user.job(running).status is S.FINISHED and grid.cpu.credits() > earned0
    grid.cpu.refuse(assigned)  # and it can hand back what it cannot claim
    grid.admin.approve(grid.cpu.address)  # approving lifts the ban
    grid.scheduler.assign(pending, grid.cpu.address)
    assert grid.user.job(pending).status is S.META_SCHEDULED


@pytest.mark.parametrize("status", [S.META_SCHEDULED, S.SCHEDULED, S.RUNNING], ids=lambda s: s.name)
def test_remove_refused_while_the_provider_holds_jobs(grid: Grid, status: JobStatus) -> None:
    job_id = grid.job_in(status)
    with unchanged(grid, grid.cpu.address), pytest.raises(errors.ProviderBusy) as info:
        grid.admin.remove(grid.cpu.address)
    assert info.value.args_dict["provider"] == grid.cpu.address
    grid.cpu.panic(job_id)
    grid.admin.remove(grid.cpu.address)
    assert grid.cpu.info().status is ProviderStatus.REMOVED


def test_removed_provider_registers_again_with_its_id(grid: Grid) -> None:
    done = grid.job_in(S.RUNNING)
    grid.chain.increase_time(60)
    grid.cpu.finish(done, 0)
    earned, pid = grid.cpu.credits(), grid.cpu.info().id
    grid.admin.remove(grid.cpu.address)
    removed = grid.cpu.info()
    assert removed.status is ProviderStatus.REMOVED
    with pytest.raises(errors.ProviderNotRegistered):
        grid.cpu.update_prices(CPU_PRICES)
    job_id = grid.submit()
    with pytest.raises(errors.ProviderNotApproved):
        grid.scheduler.assign(job_id, grid.cpu.address)
    assert grid.cpu.withdraw().amount == earned  # earnings survive removal
    count = grid.user.market.functions.providerCount().call()

    grid.cpu.register(HW, PRICES, {"zone": "us"})
    again = grid.cpu.info()
    assert (again.status, again.id, again.total, again.free, again.prices) == (
        ProviderStatus.PENDING, pid, HW, HW, PRICES
    )
    assert grid.user.market.functions.providerCount().call() == count
    assert _label(grid, grid.cpu.address, "zone") == encode_value("us")
    grid.admin.approve(grid.cpu.address)
    grid.scheduler.assign(job_id, grid.cpu.address)
    assert grid.user.job(job_id).provider == grid.cpu.address


def test_labels_of_an_earlier_registration_do_not_survive_it(grid: Grid) -> None:
    """A removed provider that registers again starts with no labels: a stale gpu.model would lie."""
    assert _label(grid, grid.gpu.address, "gpu.model") == encode_value("A100")
    grid.admin.remove(grid.gpu.address)
    grid.gpu.register(HW, PRICES, {})
    grid.admin.approve(grid.gpu.address)
    assert _label(grid, grid.gpu.address, "gpu.model") == b"\0" * 32
    labels = tuple(on_chain([parse_constraint("gpu.model == A100")]))
    job_id = grid.submit(labels=(parse_constraint("gpu.model == A100"),))
    with pytest.raises(errors.LabelMismatch):
        grid.scheduler.assign(job_id, grid.gpu.address, labels)
    grid.gpu.set_labels({"gpu.model": "A100"})
    grid.scheduler.assign(job_id, grid.gpu.address, labels)


def test_status_changes_are_announced(grid: Grid) -> None:
    receipts = [
        grid.admin.wallet.transact(grid.admin.market.functions.banProvider(grid.spare.address)),
        grid.admin.wallet.transact(grid.admin.market.functions.approveProvider(grid.spare.address)),
        grid.admin.wallet.transact(grid.admin.market.functions.removeProvider(grid.spare.address)),
    ]
    event = grid.user.market.events.ProviderStatusChanged()
    logs = [e["args"] for r in receipts for e in event.process_receipt(r, errors=DISCARD)]
    seen = [(a["provider"], a["status"]) for a in logs]
    expected = (ProviderStatus.BANNED, ProviderStatus.APPROVED, ProviderStatus.REMOVED)
    assert seen == [(grid.spare.address, s) for s in expected]
