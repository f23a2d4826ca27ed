"""Shared fixtures: a real Anvil node per test session, a deployed grid, snapshot isolation per test.

After every test that used the grid, credits must be conserved: the market's token balance equals
the sum of escrows plus the sum of internal balances.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase

from dsq_chain.sdk.anvil import AnvilNode, dev_keys, start_anvil
from dsq_chain.sdk.chain import Chain
from tests.grid import Grid, build_grid, conservation_gap
from tests.oci_fixtures import busybox_image, container_tools, image_cache, oci_auth_registry, oci_registry  # noqa: F401
from tests.storage_fixtures import http_server, s3_auth_server, s3_bucket, s3_env, s3_server  # noqa: F401

#: Failing examples are saved here (ignored by git) and replayed first by the next run.
HYPOTHESIS_DB = DirectoryBasedExampleDatabase(str(Path(__file__).resolve().parent.parent / ".hypothesis" / "examples"))
# Hypothesis' own "ci" profile (loaded whenever CI is set) fixes the seed and forgets failures: every CI run
# would replay the same cases. Ours explores new cases on every run, saves what fails and prints the blob that
# replays it (@reproduce_failure). HYPOTHESIS_PROFILE=dev is the same with fewer examples; =replay fixes the seed.
settings.register_profile("ci", derandomize=False, print_blob=True, database=HYPOTHESIS_DB)
settings.register_profile("dev", derandomize=False, print_blob=True, database=HYPOTHESIS_DB, max_examples=20)
settings.register_profile("replay", derandomize=True, print_blob=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def anvil() -> Iterator[AnvilNode]:
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="session")
def keys() -> list[str]:
    return dev_keys(20)


@pytest.fixture(scope="session")
def chain(anvil: AnvilNode) -> Chain:
    return Chain(anvil.rpc_url)


@pytest.fixture(scope="session")
def _grid_session(chain: Chain, keys: list[str]) -> Grid:
    return build_grid(chain, keys)


@pytest.fixture
def grid(_grid_session: Grid, chain: Chain) -> Iterator[Grid]:
    """The standard grid, reverted to its initial state after the test; checks credit conservation."""
    snap = chain.snapshot()
    _grid_session.reset_nonces()
    try:
        yield _grid_session
        gap = conservation_gap(_grid_session)
        assert gap == 0, f"credits not conserved: market holds {gap} units more than escrows + balances"
    finally:
        chain.revert(snap)
        _grid_session.reset_nonces()
