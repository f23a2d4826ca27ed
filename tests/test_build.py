"""The compile pipeline: committed artifacts match a fresh compile; Python enums match Solidity's."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from dsq_chain import artifacts, errors, types
from dsq_chain.artifacts import build
from dsq_chain.artifacts.build import compile_contracts


@pytest.fixture(scope="module")
def fresh() -> dict[str, object]:
    return compile_contracts()


def test_committed_artifacts_match_a_fresh_compile(fresh: dict[str, object]) -> None:
    committed = json.loads(artifacts.ARTIFACTS_PATH.read_text())
    assert committed == fresh, "dsq_chain/artifacts/contracts.json is stale: run `python -m dsq_chain.artifacts.build`"


def test_contract_reference_is_generated_from_current_natspec(fresh: dict[str, object]) -> None:
    from dsq_chain.artifacts import natspec

    committed = (build.project_root() / "docs" / "contracts.md").read_text()
    assert committed == natspec.render(fresh), "docs/contracts.md is stale: run `python -m dsq_chain.artifacts.build`"
    for name in ("submitWithPermit", "assignBatch", "report", "JobSettled", "InvalidStatus"):
        assert name in committed


@pytest.mark.parametrize(
    "name", ["JobStatus", "ProviderStatus", "ReleaseReason", "ReportAction", "LabelOp"]
)
def test_python_enums_mirror_solidity(fresh: dict[str, dict[str, list[str]]], name: str) -> None:
    solidity = fresh["enums"][name]
    python = [m.name for m in getattr(types, name)]
    # LabelOp.IN exists off-chain only (the meta-scheduler evaluates it); all others match exactly.
    if name == "LabelOp":
        python = [n for n in python if n != "IN"]
    assert python == solidity
    assert [m.value for m in getattr(types, name)][: len(solidity)] == list(range(len(solidity)))


def test_every_custom_error_has_a_python_exception() -> None:
    abi_errors = {e["name"] for c in artifacts.load()["contracts"].values() for e in c["abi"] if e["type"] == "error"}
    assert abi_errors == set(errors.CONTRACT_ERRORS)
    for name in abi_errors:
        cls = getattr(errors, name)
        assert issubclass(cls, errors.ContractError) and cls.__name__ == name


def test_sdk_limits_match_contract_constants() -> None:
    from dsq_chain.sdk import client

    doc = artifacts.load()["contracts"]["JobMarket"]
    assert doc["bytecode"].startswith("0x") and len(doc["bytecode"]) > 1000
    # constants are public getters; read them from a deployment in test_contracts, here from the source
    src = (build.project_root() / "contracts" / "JobMarket.sol").read_text()
    assert f"MAX_WORKFLOW_BYTES = {client.MAX_WORKFLOW_BYTES:_}" in src
    assert f"MAX_JOB_LABELS = {client.MAX_JOB_LABELS}" in src
    assert f"MAX_ARRAY_JOBS = {client.MAX_ARRAY_JOBS:_};" in src


def test_build_check_command_passes_on_fresh_artifacts() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dsq_chain.artifacts.build", "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "fresh" in proc.stdout
