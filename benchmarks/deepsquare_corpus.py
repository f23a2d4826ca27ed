"""How much of the public DeepSquare corpus (``tests/data/deepsquare``) this grid takes as it is, and runs.

    .venv/bin/python benchmarks/deepsquare_corpus.py [--timeout 20] [--verbose]

Loads every workflow listed in the corpus's SOURCES (the sbatch-service fixtures hold their job under
``job:``; that job is what is loaded), then runs each loaded one that needs nothing from outside this
machine (no container image from a public registry, no input/output storage on the internet) through its
rendered script, as the local executor runs it, with a time limit (many of them are services that run
until cancelled). Prints::

    deepsquare corpus: N of M load as-is, K run

then, with ``--verbose``, why each other file does not load (its first reason) or does not run. The
target is every file that DeepSquare's own schema accepts and that asks for nothing refused here.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from dsq_chain.workloads.steps import walk
from dsq_chain.workloads.workflow import Workflow, WorkflowError, loads, render_script

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "deepsquare"


def corpus() -> list[Path]:
    names = [line.split("\t")[0] for line in (DATA / "SOURCES").read_text().splitlines() if line and line[0] != "#"]
    return [DATA / name for name in names if name != "job.schema.json"]


def job_text(path: Path) -> str:
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(doc, dict) and "job" in doc and "steps" not in doc:
        return json.dumps(doc["job"])
    return text


def self_contained(wf: Workflow) -> str | None:
    """Why ``wf`` cannot run here without the internet, or None."""
    if wf.input is not None or wf.output is not None:
        return "input/output storage on the internet"
    if any(step.container is not None for step in walk(wf.steps)):
        return "a container image from a public registry"
    if wf.gpus:
        return "GPUs"
    return None


def run(wf: Workflow, timeout: float) -> str | None:
    """Run ``wf``'s script in a scratch folder; None when it ends with 0, else why not."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "job.sh").write_text(render_script(wf, 1))
        try:
            proc = subprocess.run(
                ["bash", "job.sh"], cwd=tmp, capture_output=True, timeout=timeout, check=False, start_new_session=True
            )
        except subprocess.TimeoutExpired:
            return f"still running after {timeout:g} s (a service)"
        return None if proc.returncode == 0 else f"exit {proc.returncode}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds a workflow may run (default 20)")
    parser.add_argument("--verbose", action="store_true", help="say why each other file does not load or run")
    args = parser.parse_args()
    files = corpus()
    loaded: list[tuple[Path, Workflow]] = []
    why: dict[str, str] = {}
    reasons: collections.Counter[str] = collections.Counter()
    for path in files:
        try:
            loaded.append((path, loads(job_text(path), source=path.name)))
        except WorkflowError as err:
            first = err.errors[0]
            why[path.name] = str(first)
            reasons[first.expected.split(":")[0] if "refused" in first.expected else first.expected[:60]] += 1
    ran = 0
    for path, wf in loaded:
        reason = self_contained(wf) or run(wf, args.timeout)
        if reason is None:
            ran += 1
        else:
            why[path.name] = f"loads; does not run here: {reason}"
    print(f"deepsquare corpus: {len(loaded)} of {len(files)} load as-is, {ran} run")
    if args.verbose:
        for name, reason in sorted(why.items()):
            print(f"  {name}: {reason}")
        print("first reasons of the files that do not load:")
        for reason, count in reasons.most_common():
            print(f"  {count:3d}  {reason}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
