"""Static analysis: slither over contracts/ through the project's solc script.

Fails on any high or medium finding that slither-triage.json does not accept with a reason, and on
any triage entry that no longer matches a finding (so the triage cannot go stale).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsq_chain.artifacts.build import project_root, solc_binary

ROOT = project_root()


@pytest.mark.xdist_group("slither")
def test_no_untriaged_high_or_medium_findings(tmp_path: Path) -> None:
    slither = shutil.which("slither") or str(Path(sys.executable).parent / "slither")
    report = tmp_path / "slither.json"
    proc = subprocess.run(
        [slither, "contracts/", "--config-file", "slither.config.json", "--solc", str(solc_binary(ROOT)),
         "--json", str(report)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert report.exists(), f"slither did not run ({proc.returncode}): {proc.stderr[-2000:]}"
    data = json.loads(report.read_text())
    assert data["success"], data.get("error")
    findings = [r for r in data["results"].get("detectors", []) if r["impact"] in ("High", "Medium")]
    triage = json.loads((ROOT / "slither-triage.json").read_text())["accepted"]
    for entry in triage:
        assert entry.get("reason"), f"triage entry without a reason: {entry}"

    def accepted(finding: dict[str, object]) -> bool:
        return any(t["check"] == finding["check"] and t["match"] in str(finding["description"]) for t in triage)

    untriaged = [f"{f['impact']} {f['check']}: {str(f['description']).strip().splitlines()[0]}"
                 for f in findings if not accepted(f)]
    assert not untriaged, "untriaged slither findings:\n" + "\n".join(untriaged)
    stale = [t for t in triage if not any(t["check"] == f["check"] and t["match"] in str(f["description"])
                                          for f in findings)]
    assert not stale, f"triage entries that match no finding any more (remove them): {stale}"
