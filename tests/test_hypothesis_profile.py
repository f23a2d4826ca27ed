"""The property tests explore new cases on every run, CI included, and say how to replay a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.conftest import HYPOTHESIS_DB

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE", "ci") != "ci", reason="another profile was chosen")
def test_the_ci_profile_is_loaded_and_explores() -> None:
    current = settings.default
    assert current.derandomize is False, "a fixed seed replays the same cases every run"
    assert current.print_blob is True, "a failure must print the blob that replays it"
    assert isinstance(current.database, DirectoryBasedExampleDatabase)


def test_failures_are_kept_in_a_folder_git_ignores() -> None:
    path = Path(HYPOTHESIS_DB.path)
    assert path.is_relative_to(ROOT / ".hypothesis")
    assert ".hypothesis/" in (ROOT / ".gitignore").read_text().splitlines()


seen: set[int] = set()


@settings(max_examples=5, database=None)
@given(st.integers(0, 2**64))
def _draw(x: int) -> None:
    seen.add(x)


def test_two_runs_draw_different_cases() -> None:
    """With derandomize=False each run starts from a fresh seed (a fixed seed would draw the same values)."""
    _draw()
    first = set(seen)
    seen.clear()
    _draw()
    assert seen != first
