"""Scenario files: YAML checked against ``dsq_chain/schemas/scenario.schema.json`` before anything runs.

A wrong or missing field gives one :class:`ScenarioError` naming the file, the field's path, what
was expected (the schema's description of it) and what was found.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from dsq_chain.errors import InputError
from dsq_chain.workloads.labels import LabelExpressionError, parse_constraint


class ScenarioError(InputError):
    """A scenario that cannot run: the message names the file, the field, the expected and found values."""


@cache
def schema() -> dict[str, Any]:
    """The published scenario schema."""
    text = resources.files("dsq_chain").joinpath("schemas/scenario.schema.json").read_text()
    return dict(json.loads(text))


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _describe(err: jsonschema.ValidationError) -> str:
    """``field: expected ..., found ...`` for the most specific failure."""
    error: Any = err  # jsonschema types its attributes as possibly unset
    if error.validator == "required":
        missing = next(m for m in error.validator_value if m not in error.instance)
        where = _path([*error.absolute_path, missing])
        sub = error.schema.get("properties", {}).get(missing) or _schema_at([*error.absolute_path, missing])
        expected = sub.get("description") or _resolve_description(sub) or f"a value of type {sub.get('type', 'any')}"
        return f"{where}: missing; expected {expected}"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        return f"{_path([*error.absolute_path, extra[0]])}: unknown field; expected one of {', '.join(allowed)}"
    if error.validator == "anyOf" and not error.absolute_path:
        return "(top level): missing users or trace; expected a list of user populations or an SWF trace"
    expected = error.schema.get("description") or _resolve_description(error.schema) or _rule(error)
    return f"{_path(error.absolute_path)}: expected {expected}, found {error.instance!r}"


def _branch_error(error: jsonschema.ValidationError) -> jsonschema.ValidationError | None:
    """The error inside a oneOf/anyOf: from the branch the value meant (a distribution names its ``dist``)."""
    context = list(error.context or [])
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for e in context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    meant = [errs for errs in branches.values()
             if not any(e.validator in ("type", "const") and len(e.relative_path) <= 1 for e in errs)]
    if error.validator == "oneOf" and len(meant) != 1:
        return None  # no branch fits: the oneOf's own description says what is expected
    pool = meant[0] if len(meant) == 1 else context
    return jsonschema.exceptions.best_match(pool) or pool[0]


def _rule(err: jsonschema.ValidationError) -> str:
    error: Any = err
    names = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if error.validator in names:
        return f"a number {names[str(error.validator)]} {error.validator_value}"
    if error.validator == "type":
        return f"a value of type {error.validator_value}"
    if error.validator == "enum":
        return "one of " + ", ".join(map(str, error.validator_value))
    return f"{error.validator} {error.validator_value!r}"


def _schema_at(parts: list[Any]) -> dict[str, Any]:
    """The schema of the field at the instance path ``parts`` ({} when it cannot be followed)."""
    node: dict[str, Any] = schema()
    for part in parts:
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            node = schema()["$defs"][ref.removeprefix("#/$defs/")]
        node = node.get("items", {}) if isinstance(part, int) else node.get("properties", {}).get(part, {})
    return node


def _resolve_description(sub: dict[str, Any]) -> str | None:
    ref = sub.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        return str(schema()["$defs"][ref.removeprefix("#/$defs/")].get("description") or "") or None
    return None


def validate(doc: Any, source: str = "scenario") -> dict[str, Any]:
    """``doc`` if it is a valid scenario; else :class:`ScenarioError` with the first problem."""
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(doc))
    if error is not None:
        # best_match prefers the shallowest error; the deepest one names the field that is wrong
        while error.context:
            inner = _branch_error(error)
            if inner is None:
                break
            error = inner
        raise ScenarioError(f"{source}: {_describe(error)}")
    assert isinstance(doc, dict)
    for i, pop in enumerate(doc.get("users", [])):
        for j, text in enumerate(pop["jobs"].get("labels", [])):
            try:
                parse_constraint(text)
            except LabelExpressionError as e:
                raise ScenarioError(f"{source}: users[{i}].jobs.labels[{j}]: expected a label constraint "
                                    f"such as 'zone == eu', found {text!r} ({e})") from None
    names = [p["name"] for p in doc["providers"]] + [u["name"] for u in doc.get("users", [])]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup is not None:
        raise ScenarioError(f"{source}: population name {dup!r} is used twice; expected unique names")
    return doc


def load(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Reads, overrides (``{"protocol.fee_bps": 100}``) and validates a scenario file."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"{path}: not YAML: {e}") from None
    for key, value in (overrides or {}).items():
        doc = override(doc, key, value, str(path))
    doc = validate(doc, str(path))
    doc["base_dir"] = str(path.parent)
    return doc


def override(doc: Any, key: str, value: Any, source: str = "scenario") -> Any:
    """A copy of ``doc`` with the dotted ``key`` (list items by index) set to ``value``."""
    doc = copy.deepcopy(doc)
    node = doc
    parts = key.split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ScenarioError(f"{source}: --sweep {key}: {'.'.join(parts[:i]) or 'top level'} is a list of "
                                    f"{len(node)}; expected an index 0..{len(node) - 1}, found {part!r}")
            if last:
                node[int(part)] = value
            node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ScenarioError(f"{source}: --sweep {key}: {'.'.join(parts[:i])} is not a mapping or list")
    return doc


def parse_sweep(text: str) -> tuple[str, list[Any]]:
    """``PARAM=a,b,c`` -> (PARAM, [a, b, c]) with each value read as YAML (numbers stay numbers)."""
    key, sep, values = text.partition("=")
    if not sep or not key or not values:
        raise ScenarioError(f"--sweep {text!r}: expected PARAM=a,b,c (e.g. protocol.fee_bps=0,100,500)")
    return key.strip(), [yaml.safe_load(v) for v in values.split(",")]
