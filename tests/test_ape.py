"""The `ape` extra: with it installed, `ape compile` compiles contracts/ offline through the project's
solc script, and yields the same ABIs the SDK ships.

The extra lives in its own venv (.venv-ape, reused while pyproject.toml is unchanged) because
eth-ape pins much of the web3 stack; installing it takes a while on a fresh machine, which is why
this test runs in its own xdist group, alongside the rest of the suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dsq_chain import artifacts
from dsq_chain.artifacts.build import project_root, solc_binary

ROOT = project_root()
VENV = ROOT / ".venv-ape"


def _ape_venv() -> Path:
    stamp = VENV / ".installed"
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if stamp.exists() and stamp.read_text() == digest:
        return VENV / "bin" / "ape"
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    proc = subprocess.run([*pip, f"{ROOT}[ape]"], capture_output=True, text=True, timeout=1500)
    if proc.returncode != 0:
        pytest.fail(f"installing the ape extra failed:\n{proc.stderr[-3000:]}")
    stamp.write_text(digest)
    return VENV / "bin" / "ape"


@pytest.mark.slow
@pytest.mark.xdist_group("ape")
@pytest.mark.timeout(1800)
def test_ape_compile_offline_matches_sdk_artifacts(tmp_path: Path) -> None:
    ape = _ape_venv()
    project = tmp_path / "project"
    project.mkdir()
    shutil.copytree(ROOT / "contracts", project / "contracts")
    shutil.copy(ROOT / "ape-config.yaml", project / "ape-config.yaml")
    (project / "node_modules").symlink_to(ROOT / "node_modules")
    env = {**os.environ, "HOME": str(tmp_path / "home"), "SOLCX_BINARY_PATH": str(solc_binary(ROOT).parent)}
    proc = subprocess.run([str(ape), "compile", "--force"], cwd=project, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiled" in proc.stdout + proc.stderr
    manifest = json.loads((project / ".build" / "__local__.json").read_text())
    types = manifest["contractTypes"]
    for name in ("CreditToken", "JobMarket"):
        ape_abi = sorted(json.dumps(x, sort_keys=True) for x in types[name]["abi"])
        sdk_abi = sorted(json.dumps(x, sort_keys=True) for x in artifacts.abi(name))
        assert ape_abi == sdk_abi, f"{name}: ape's ABI differs from the SDK's artifacts"
