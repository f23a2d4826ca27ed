"""The project's docs cite only what exists: every file path and every test name in README.md and docs/.

A doc that names ``tests/test_x.py`` or ``test_something_holds`` promises a reader they can open it;
this fails when a file is renamed or a test removed without the doc following. Docs must also not
point at design notes kept outside the project.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: A path inside the project: starts with one of its top-level folders, or is a top-level file.
_PATH = re.compile(
    r"(?<![\w/.-])((?:dsq_chain|tests|benchmarks|contracts|docs|examples|scripts)/[\w./-]*\w"
    r"|(?:Makefile|README\.md|pyproject\.toml|package\.json|ape-config\.yaml))(?![\w/-])"
)
_TEST = re.compile(r"\btest_[a-z0-9_]+\b")
_OUTSIDE = re.compile(r"\.\./shared|DESIGN\.md|TOOLCHAIN\.md")


def _all_test_names() -> set[str]:
    names: set[str] = set()
    for f in (ROOT / "tests").rglob("*.py"):
        names.add(f.stem)
        names |= set(re.findall(r"^\s*(?:async\s+)?def (test_\w+)", f.read_text(), re.M))
    return names


TESTS = _all_test_names()


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_path_exists(doc: Path) -> None:
    missing = []
    for m in _PATH.finditer(doc.read_text()):
        cited = m.group(1).rstrip(".")
        base = cited.split("::")[0]
        if "*" in base or "<" in base:
            continue
        if not (ROOT / base).exists() and not (doc.parent / base).exists():
            missing.append(cited)
    assert not missing, f"{doc.name} cites files that do not exist: {sorted(set(missing))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_cited_test_exists(doc: Path) -> None:
    cited = set(_TEST.findall(doc.read_text()))
    missing = sorted(cited - TESTS)
    assert not missing, f"{doc.name} cites tests that do not exist: {missing}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_docs_do_not_point_outside_the_project(doc: Path) -> None:
    found = _OUTSIDE.findall(doc.read_text())
    assert not found, f"{doc.name} points at notes outside the project: {found}"


# ------------------------------------------------------------------ the status-change walk
WALK_HEADING = "### One status change, followed through the files"
WALK_MAX_FILES = 10
#: Only code counts as a file of the walk (the section may cite this test).
_CODE = ("dsq_chain/", "contracts/")


def _walk() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text()
    start = text.index(WALK_HEADING)
    end = text.find("\n### ", start + len(WALK_HEADING))
    return text[start:] if end == -1 else text[start:end]


def _walk_files() -> list[str]:
    found = [m.group(1).rstrip(".") for m in _PATH.finditer(_walk())]
    return sorted({f for f in found if f.startswith(_CODE)})


def test_the_status_change_walk_opens_at_most_ten_files_that_exist() -> None:
    files = _walk_files()
    assert files, "the walk names no file"
    assert len(files) <= WALK_MAX_FILES, f"the walk opens {len(files)} files (at most {WALK_MAX_FILES}): {files}"
    assert [f for f in files if not (ROOT / f).is_file()] == []
    stated = re.search(r"\*\*(\d+) files\*\*", _walk())
    assert stated is not None and int(stated.group(1)) == len(files), (
        f"the walk says {stated.group(1) if stated else 'nothing'} files, it names {len(files)}: {files}")


def test_every_name_the_walk_cites_is_in_its_files() -> None:
    """``GridState.apply``, ``_claim``, ``decide(facts)``: each part of each name is in one of the walk's files."""
    code = "\n".join((ROOT / f).read_text() for f in _walk_files())
    missing = []
    for token in re.findall(r"`([^`\n]+)`", _walk()):
        name = re.fullmatch(r"([A-Za-z_][\w.]*)(?:\(.*\))?", token)
        if name is None or _PATH.fullmatch(token) or token.endswith((".py", ".sol")):
            continue
        missing += [part for part in name.group(1).split(".") if not re.search(rf"\b{part}\b", code)]
    assert missing == [], f"the walk cites names its files do not hold: {sorted(set(missing))}"
