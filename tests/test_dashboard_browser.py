"""The dashboard in a real headless Chromium: live updates without reload, pending reasons, every page.

A screenshot of each page is saved (see ``tests/browser.py`` for where).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dsq_chain.money import Credits
from dsq_chain.services.index import IndexReader, IndexService
from dsq_chain.types import CREDIT_UNIT, JobStatus
from dsq_chain.web.app import create_app
from dsq_chain.web.server import DashboardServer
from tests.browser import browser_fixture, screenshot_dir  # noqa: F401  (the browser fixture)
from tests.grid import Grid
from tests.test_index import submit_workflow


class Live:
    """An index kept up to date in a thread, and the dashboard on it."""

    def __init__(self, grid: Grid, url: str) -> None:
        self.index = IndexService(grid.chain, grid.deployment, url)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.index.run, args=(self.stop,), kwargs={"interval": 0.1},
                                       daemon=True)
        self.thread.start()
        self.server = DashboardServer(create_app(IndexReader(url))).start()
        self.url = self.server.url

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.server.stop()
        self.index.close()


@pytest.fixture
def live(grid: Grid, tmp_path: Path) -> Iterator[Live]:
    lv = Live(grid, f"sqlite:///{tmp_path / 'index.sqlite'}")
    try:
        yield lv
    finally:
        lv.close()


def wait_for(cond: Callable[[], Any], what: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def text_of(driver: Any, element_id: str) -> str:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    try:
        return str(driver.find_element("id", element_id).text)
    except (NoSuchElementException, StaleElementReferenceException):
        return ""


def mark(driver: Any) -> None:
    """A marker a reload would wipe: the checks below prove the page updated itself."""
    driver.execute_script("window.__noReload = 42")


def not_reloaded(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__noReload === 42"))


def test_a_job_appears_and_moves_through_its_statuses_live(grid: Grid, live: Live, browser: Any) -> None:
    driver = browser
    earlier = grid.job_in(JobStatus.FINISHED)
    grid.job_in(JobStatus.RUNNING, provider=grid.gpu)
    wait_for(lambda: IndexReader(live.index.url).job(earlier), "the first jobs in the index")
    driver.get(live.url + "/")
    wait_for(lambda: driver.execute_script("return document.getElementById('live-dot').classList.contains('live')"),
             "the live stream")
    mark(driver)
    job = submit_workflow(grid)
    wait_for(lambda: f"job-{job}" in driver.page_source, "the new job's row")
    row = driver.find_element("id", f"job-{job}")
    assert "PENDING" in row.text and "probe" in row.text and not_reloaded(driver)

    driver.get(f"{live.url}/jobs/{job}")
    mark(driver)
    steps: list[tuple[Callable[[], None], str]] = [
        (lambda: grid.scheduler.assign(job, grid.cpu.address), "META_SCHEDULED"),
        (lambda: grid.cpu.claim(job), "SCHEDULED"),
        (lambda: grid.cpu.start(job), "RUNNING"),
        (lambda: grid.user.top_up(job, Credits(units=CREDIT_UNIT)), "RUNNING"),
        (lambda: grid.cpu.finish(job, 0), "FINISHED"),
    ]
    for act, status in steps:
        act()
        wait_for(lambda s=status: text_of(driver, "job-status") == s, f"status {status} on the page")  # type: ignore[misc]
        assert not_reloaded(driver)
    wait_for(lambda: text_of(driver, "bill-kind") == "final", "the final bill")
    timeline = driver.find_element("id", "timeline").text
    for status in ("PENDING", "META_SCHEDULED", "SCHEDULED", "RUNNING", "FINISHED"):
        assert status in timeline
    assert "JobToppedUp" in timeline and not_reloaded(driver)
    driver.save_screenshot(str(screenshot_dir() / "job-finished.png"))

    driver.get(live.url + "/")
    wait_for(lambda: f"job-{job}" in driver.page_source, "the jobs list")
    driver.save_screenshot(str(screenshot_dir() / "jobs.png"))
    driver.get(f"{live.url}/?status=FINISHED")
    assert f"job-{earlier}" in driver.page_source and f"job-{job}" in driver.page_source


def test_pending_reason_shows_for_an_impossible_job(grid: Grid, live: Live, browser: Any) -> None:
    driver = browser
    impossible = submit_workflow(grid, cpus=64, labels="gpu.model == H100")
    wait_for(lambda: IndexReader(live.index.url).job(impossible), "the job in the index")
    driver.get(f"{live.url}/jobs/{impossible}")
    pending = driver.find_element("id", "pending")
    assert pending.is_displayed()
    verdicts = driver.find_element("id", "explain").text
    assert "cpus: needs 64" in verdicts and grid.cpu.address in verdicts
    assert "placeable on 0 of" in text_of(driver, "explain-headline")
    assert "dsq logs" in driver.page_source
    driver.save_screenshot(str(screenshot_dir() / "job-pending.png"))


def test_providers_and_market_pages(grid: Grid, live: Live, browser: Any) -> None:
    driver = browser
    for _ in range(2):
        grid.job_in(JobStatus.FINISHED)
    grid.job_in(JobStatus.RUNNING, provider=grid.gpu)
    refused = submit_workflow(grid)
    grid.scheduler.assign(refused, grid.cpu.address)
    grid.cpu.refuse(refused)
    grid.cpu.pause()
    wait_for(lambda: IndexReader(live.index.url).job(refused) and
             IndexReader(live.index.url).job(refused)["status"] == "PENDING", "the index")  # type: ignore[index]
    time.sleep(0.3)
    driver.get(live.url + "/providers")
    table = driver.find_element("id", "providers").text
    assert grid.gpu.address in table and "APPROVED" in table and "(paused)" in table and "gpu.model=A100" in table
    driver.save_screenshot(str(screenshot_dir() / "providers.png"))
    driver.get(live.url + "/market")
    wait_for(lambda: driver.execute_script(
        "return !!window.Chart && Object.keys(Chart.instances).length === 4"), "the four charts")
    assert "refused" in driver.execute_script(
        "return JSON.stringify(Object.values(Chart.instances).map(c => c.data.labels))")
    driver.save_screenshot(str(screenshot_dir() / "market.png"))
    driver.get(live.url + "/jobs/999999")
    assert "not in the index" in driver.page_source
