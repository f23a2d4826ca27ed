"""The `ape` extra on a fresh clone, through the one documented command, ``scripts/ape``:

- ``scripts/ape compile`` compiles contracts/ offline (the project's solc script, OpenZeppelin from
  node_modules) and yields the same ABIs the SDK ships;
- ``scripts/ape test examples/ape`` runs the ape test example: the SDK signing with ape's accounts on
  the Anvil ape-foundry starts, reverts raising the contract's errors.

The extra lives in its own venv (.venv-ape, installed by ``scripts/ape`` on first use, ~2 min here, and
reused while pyproject.toml is unchanged) because eth-ape pins much of the web3 stack; this test runs in
its own xdist group, alongside the rest of the suite.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from dsq_chain import artifacts
from dsq_chain.artifacts.build import project_root

ROOT = project_root()


def _fresh_clone(dest: Path) -> Path:
    """The tracked files of this checkout (as they are now) in ``dest``, with `make setup`'s node_modules."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    (dest / "node_modules").symlink_to(ROOT / "node_modules")
    return dest


def _ape(clone: Path, home: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SOLCX_", "PYTEST_", "APE_"))}
    env |= {"HOME": str(home), "DSQ_APE_VENV": str(ROOT / ".venv-ape")}  # a new user; the venv is shared
    return subprocess.run([str(clone / "scripts" / "ape"), *args], cwd=clone, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.xdist_group("ape")
@pytest.mark.timeout(2400)
def test_ape_compile_and_ape_test_on_a_fresh_clone(tmp_path: Path) -> None:
    clone = _fresh_clone(tmp_path / "clone")
    home = tmp_path / "home"
    home.mkdir()

    proc = _ape(clone, home, "compile", timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "compiled" in proc.stdout + proc.stderr
    assert "download" not in (proc.stdout + proc.stderr).lower()
    manifest = json.loads((clone / ".build" / "__local__.json").read_text())
    types = manifest["contractTypes"]
    # The SDK's JobMarket ABI is the market's and the registry's together (the market runs the registry's
    # code at its own address); ape compiles the two contracts apart.
    for name, parts in (("CreditToken", ("CreditToken",)), ("JobMarket", ("JobMarket", "ProviderRegistry"))):
        ape_abi = sorted({json.dumps(x, sort_keys=True) for part in parts for x in types[part]["abi"]})
        sdk_abi = sorted({json.dumps(x, sort_keys=True) for x in artifacts.abi(name)})
        assert ape_abi == sdk_abi, f"{name}: ape's ABI differs from the SDK's artifacts"

    proc = _ape(clone, home, "test", "examples/ape", "-q", timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "3 passed" in out
