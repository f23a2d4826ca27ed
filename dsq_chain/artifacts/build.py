"""Compile ``contracts/`` into the artifacts the SDK ships (``dsq_chain/artifacts/contracts.json``).

Run ``python -m dsq_chain.artifacts.build`` (or ``dsq build``) from a source checkout. py-solc-x drives a
native ``solc`` on PATH when its version matches, else the project's own ``scripts/solc.js`` over
npm's solcjs, registered as ``.solc-bin/solc-v0.8.28``. Every compiler setting lives here, in
:data:`SETTINGS`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import solcx
import solcx.exceptions

from dsq_chain.artifacts import ARTIFACTS_PATH, natspec

SOLC_VERSION = "0.8.28"
#: Contracts whose ABI and bytecode ship with the SDK.
CONTRACTS = ("CreditToken", "JobMarket", "ProviderRegistry")
#: Contracts whose code another runs through its fallback (DELEGATECALL): their functions, events and
#: errors are merged into the host's ABI and NatSpec, since callers reach them at the host's address.
DELEGATED = {"ProviderRegistry": "JobMarket"}
#: The one place where compiler settings are stated.
SETTINGS: dict[str, Any] = {
    "optimizer": {"enabled": True, "runs": 10_000},
    "viaIR": False,
    "evmVersion": "cancun",
    "metadata": {"bytecodeHash": "none"},
    "remappings": ["@openzeppelin/=node_modules/@openzeppelin/"],
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object",
                                     "evm.deployedBytecode.immutableReferences", "userdoc", "devdoc"],
                               "": ["ast"]}},
}
#: Enums whose member order the Python side mirrors in :mod:`dsq_chain.types`.
ENUMS = ("JobStatus", "ProviderStatus", "ReleaseReason", "ReportAction", "LabelOp")


class BuildError(RuntimeError):
    """The contracts did not compile; the message carries the compiler's diagnostics."""


def project_root(start: Path | None = None) -> Path:
    """The source checkout holding ``contracts/`` (this package's parent, or a parent of ``start``)."""
    candidates = [Path(__file__).resolve().parents[2]]
    here = (start or Path.cwd()).resolve()
    candidates += [here, *here.parents]
    for c in candidates:
        if (c / "contracts").is_dir() and (c / "scripts" / "solc.js").is_file():
            return c
    raise BuildError("no contracts/ folder found: run the build from a dsq-chain source checkout")


def solc_binary(root: Path) -> Path:
    """A ``solc`` of :data:`SOLC_VERSION`: a native one on PATH if it matches, else the project's script."""
    native = shutil.which("solc")
    if native:
        try:
            out = subprocess.run([native, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            out = ""
        if f"Version: {SOLC_VERSION}" in out:
            return Path(native)
    if not (root / "node_modules" / "solc").is_dir():
        raise BuildError(f"node_modules/solc is missing in {root}: run `npm ci` (or `make setup`)")
    folder = root / ".solc-bin"
    folder.mkdir(exist_ok=True)
    wrapper = folder / f"solc-v{SOLC_VERSION}"
    script = f'#!/bin/sh\nexec node "{root / "scripts" / "solc.js"}" "$@"\n'
    if not wrapper.exists() or wrapper.read_text() != script:
        wrapper.write_text(script)
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return wrapper


def sources(root: Path) -> dict[str, str]:
    """Every ``.sol`` file under ``contracts/``, keyed by its path relative to the root."""
    files = sorted((root / "contracts").rglob("*.sol"))
    return {f.relative_to(root).as_posix(): f.read_text() for f in files}


def compile_contracts(root: Path | None = None) -> dict[str, Any]:
    """Compiles ``contracts/`` and returns the artifact document (not written)."""
    root = root or project_root()
    srcs = sources(root)
    std_input = {
        "language": "Solidity",
        "sources": {name: {"content": text} for name, text in srcs.items()},
        "settings": SETTINGS,
    }
    binary = solc_binary(root)
    try:
        output: dict[str, Any] = solcx.compile_standard(
            std_input, base_path=str(root), allow_paths=[str(root)], solc_binary=binary
        )
    except solcx.exceptions.SolcError as e:
        raise BuildError(f"{binary}: {e.message}\n{e.stderr_data or ''}".strip()) from e
    contracts: dict[str, Any] = {}
    for path, by_name in output["contracts"].items():
        for name, c in by_name.items():
            if name in CONTRACTS and path.startswith("contracts/"):
                contracts[name] = {
                    "source": path,
                    "abi": c["abi"],
                    "bytecode": "0x" + c["evm"]["bytecode"]["object"],
                    "deployedBytecode": "0x" + c["evm"]["deployedBytecode"]["object"],
                    "immutableRanges": _immutable_ranges(c["evm"]["deployedBytecode"]),
                    "userdoc": c.get("userdoc", {}),
                    "devdoc": c.get("devdoc", {}),
                }
    missing = set(CONTRACTS) - set(contracts)
    if missing:
        raise BuildError(f"compiler output lacks {sorted(missing)}")
    for module, host in DELEGATED.items():
        _merge_into(contracts[host], contracts[module], module)
        contracts[module]["delegatedFrom"] = host
    digest = hashlib.sha256(json.dumps(srcs, sort_keys=True).encode()).hexdigest()
    return {
        "compiler": _compiler_info(),
        "sourcesSha256": digest,
        "enums": _enums(output),
        "constants": _constants(output),
        "contracts": contracts,
    }


def _immutable_ranges(deployed: dict[str, Any]) -> list[list[int]]:
    """[start, length] of every byte range of the runtime code the constructor fills with an immutable
    value (zero in the compiler's output), sorted: what a code check must not compare."""
    refs = deployed.get("immutableReferences") or {}
    return sorted([r["start"], r["length"]] for ranges in refs.values() for r in ranges)


def _abi_key(item: dict[str, Any]) -> tuple[str, str]:
    from dsq_chain.artifacts.natspec import signature

    return (item["type"], signature(item) if "name" in item else item["type"])


def _merge_into(host: dict[str, Any], module: dict[str, Any], module_name: str) -> None:
    """Adds ``module``'s functions, events and errors (and their NatSpec) to ``host``'s; a function
    selector both define differently is a build error (the host's would shadow the module's)."""
    from eth_utils.abi import function_signature_to_4byte_selector

    from dsq_chain.artifacts.natspec import signature

    have = {_abi_key(i) for i in host["abi"]}
    selectors = {function_signature_to_4byte_selector(signature(i)): signature(i)
                 for i in host["abi"] if i["type"] == "function"}
    for item in module["abi"]:
        if item["type"] not in ("function", "event", "error") or _abi_key(item) in have:
            continue
        if item["type"] == "function":
            sel = function_signature_to_4byte_selector(signature(item))
            if sel in selectors:
                raise BuildError(f"{module_name}.{signature(item)} has the selector of {selectors[sel]}")
        host["abi"].append(item)
    for doc in ("userdoc", "devdoc"):
        for section in ("methods", "events", "errors"):
            merged = dict(module.get(doc, {}).get(section, {}))
            merged.update(host.get(doc, {}).get(section, {}))
            if merged:
                host.setdefault(doc, {})[section] = merged


def _compiler_info() -> dict[str, Any]:
    return {"version": SOLC_VERSION, "settings": {k: v for k, v in SETTINGS.items() if k != "outputSelection"}}


def _enums(output: dict[str, Any]) -> dict[str, list[str]]:
    """Member names of the :data:`ENUMS` found in the compiled ASTs, in declaration order."""
    found: dict[str, list[str]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("nodeType") == "EnumDefinition" and node.get("name") in ENUMS:
                found[node["name"]] = [m["name"] for m in node["members"]]
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for src in output.get("sources", {}).values():
        walk(src.get("ast"))
    return found


def _constants(output: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Public numeric constants (limits the SDK must agree with) of the project's contracts, by contract."""
    found: dict[str, dict[str, int]] = {}
    for path, src in output.get("sources", {}).items():
        if not path.startswith("contracts/"):
            continue
        for node in (src.get("ast") or {}).get("nodes", []):
            if node.get("nodeType") != "ContractDefinition":
                continue
            for member in node.get("nodes", []):
                value = member.get("value") or {}
                if (member.get("nodeType") == "VariableDeclaration" and member.get("constant")
                        and member.get("visibility") == "public" and value.get("nodeType") == "Literal"
                        and value.get("kind") == "number"):
                    found.setdefault(node["name"], {})[member["name"]] = int(str(value["value"]).replace("_", ""), 0)
    return found


def write_artifacts(doc: dict[str, Any], path: Path = ARTIFACTS_PATH) -> None:
    """Writes the artifact document deterministically (sorted keys, one trailing newline)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsq build", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if the committed artifacts are stale")
    args = parser.parse_args(argv)
    try:
        doc = compile_contracts()
    except BuildError as e:
        print(f"dsq build: {e}", file=sys.stderr)
        return 1
    if args.check:
        current = json.loads(ARTIFACTS_PATH.read_text()) if ARTIFACTS_PATH.exists() else None
        if current != doc:
            print(f"dsq build: {ARTIFACTS_PATH} is stale; run `python -m dsq_chain.artifacts.build`", file=sys.stderr)
            return 1
        docs = project_root() / "docs" / "contracts.md"
        if not docs.exists() or docs.read_text() != natspec.render(doc):
            print(f"dsq build: {docs} is stale; run `python -m dsq_chain.artifacts.build`", file=sys.stderr)
            return 1
        print("artifacts are fresh")
        return 0
    write_artifacts(doc)
    docs = project_root() / "docs" / "contracts.md"
    docs.parent.mkdir(exist_ok=True)
    docs.write_text(natspec.render(doc))
    sizes = ", ".join(f"{n} {len(c['bytecode']) // 2 - 1} B" for n, c in sorted(doc["contracts"].items()))
    print(f"wrote {ARTIFACTS_PATH} ({sizes})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
