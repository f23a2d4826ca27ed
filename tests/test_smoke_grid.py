"""The standard grid fixture itself: deployed, funded, providers registered as described."""

from dsq_chain.types import JobStatus, ProviderStatus
from tests.grid import SMALL_RATE, Grid


def test_grid_is_set_up(grid: Grid) -> None:
    assert grid.cpu.info().status is ProviderStatus.APPROVED
    assert grid.pending.info().status is ProviderStatus.PENDING
    job_id = grid.job_in(JobStatus.RUNNING)
    job = grid.user.job(job_id)
    assert job.status is JobStatus.RUNNING and job.rate == SMALL_RATE and job.provider == grid.cpu.address
