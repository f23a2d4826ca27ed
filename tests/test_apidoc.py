"""docs/api.md is generated from the SDK's docstrings: fresh, complete, and naming real contract errors."""

from __future__ import annotations

import inspect
from pathlib import Path

from dsq_chain.sdk import apidoc

API = Path(__file__).resolve().parent.parent / "docs" / "api.md"


def test_api_reference_is_generated_from_current_docstrings() -> None:
    assert API.read_text() == apidoc.render(), "docs/api.md is stale: run `python -m dsq_chain.sdk.apidoc`"
    assert apidoc.main(["--check", "--out", str(API)]) == 0


def test_every_public_function_is_documented() -> None:
    assert apidoc.undocumented() == []


def test_docstrings_name_only_errors_that_exist() -> None:
    assert apidoc.unknown_errors() == {}


def test_every_transaction_method_says_what_it_raises() -> None:
    silent = []
    for _, objs in apidoc.SECTIONS:
        for obj in objs:
            if not inspect.isclass(obj):
                continue
            for name, member in apidoc.public_members(obj):
                ret = str(getattr(member, "__annotations__", {}).get("return", ""))
                if any(r in ret for r in ("Receipt", "Submission", "Withdrawal")) and "Raises" not in (
                        member.__doc__ or ""):
                    silent.append(f"{obj.__qualname__}.{name}")
    assert silent == []


def test_the_reference_lists_every_contract_error() -> None:
    from dsq_chain import errors

    text = API.read_text()
    for name in errors.CONTRACT_ERRORS:
        assert f"`{getattr(errors, name).signature}`" in text
