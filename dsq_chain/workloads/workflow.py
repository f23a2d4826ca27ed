"""Workflows: what a job runs, in YAML or JSON, close to DeepSquare workflows and Slurm.

This module parses and validates a workflow document (with the file, line and
field of every error), encodes it canonically (the bytes whose keccak256 the
chain stores), decodes it back from those bytes, renders it into a bash batch
script, and previews what a given escrow buys on a given provider.

Everything is checked here, before anything touches the chain. The format is
documented in ``docs/workflow.md``; its JSON Schema ships as package data
(:func:`json_schema`) and accepts the same documents, except for the rules a
schema cannot state (see the schema's ``$comment``).
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from typing import Any, Literal, NoReturn

import yaml
from eth_utils.crypto import keccak

from dsq_chain import artifacts
from dsq_chain.types import CREDIT_UNIT, LabelConstraint, Prices, Resources
from dsq_chain.workloads.labels import LabelExpressionError, parse_constraint

__all__ = [
    "DEFAULT_SHELL",
    "MAX_RESOURCE",
    "MAX_SOURCE_BYTES",
    "MAX_WORKFLOW_BYTES",
    "CostPreview",
    "Step",
    "Workflow",
    "WorkflowError",
    "cost_preview",
    "execution_order",
    "format_credits",
    "format_duration",
    "from_canonical",
    "json_schema",
    "load",
    "loads",
    "max_runtime_seconds",
    "render_script",
]

#: Largest canonical encoding a job may carry (mirror of the contract's limit).
MAX_WORKFLOW_BYTES = artifacts.constant("MAX_WORKFLOW_BYTES")
#: Largest workflow document accepted as input (comments and layout included).
MAX_SOURCE_BYTES = 65536
#: Upper bound of every resource number and of the job's totals (uint32).
MAX_RESOURCE = 2**32 - 1
#: Shell that runs a step's command unless the step names another one.
DEFAULT_SHELL = "/bin/sh"
#: Deepest nesting of YAML/JSON collections read (the format needs 4).
MAX_DEPTH = 16

_STEP_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SHELL_RE = re.compile(r"/[A-Za-z0-9._+/-]{0,254}")
_NAME_FORBIDDEN_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NON_SPACE_RE = re.compile(r"\S")
_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_TOP_FIELDS = ("name", "resources", "labels", "env", "steps")
_RESOURCE_FIELDS = ("tasks", "cpusPerTask", "memPerCpu", "gpus")
_STEP_FIELDS = ("name", "run", "dependsOn")
_RUN_FIELDS = ("command", "shell", "env")

#: What each field holds, for "expected ..." messages.
_EXPECTED = {
    "resources": "a mapping with tasks, cpusPerTask, memPerCpu and optionally gpus",
    "steps": "a list of at least one step",
    "tasks": "an integer >= 1",
    "cpusPerTask": "an integer >= 1",
    "memPerCpu": "an integer >= 1 (MB per CPU)",
    "name": "a step name",
    "run": "a mapping with command and optionally shell and env",
    "command": "a command line (text)",
}


# --------------------------------------------------------------------------- errors


class WorkflowError(ValueError):
    """A workflow document is malformed.

    Attributes: ``source`` (file name or ``"<input>"``), ``line`` (1-based, or
    None), ``field`` (dotted path such as ``resources.tasks`` or
    ``steps[1].run.command``; empty for the whole document), ``expected``
    (what was expected) and ``got`` (what was found, or None). ``str()`` is
    one line: ``job.yaml:4: resources.tasks: expected an integer >= 1, got 0``.
    """

    def __init__(
        self,
        expected: str,
        *,
        source: str = "<input>",
        line: int | None = None,
        field: str = "",
        got: str | None = None,
    ) -> None:
        self.source = source
        self.line = line
        self.field = field
        self.expected = expected
        self.got = got
        location = source if line is None else f"{source}:{line}"
        where = f"{field}: " if field else ""
        tail = "" if got is None else f", got {got}"
        super().__init__(f"{location}: {where}expected {expected}{tail}".replace("\n", " "))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with every attribute (for process pools and test workers)."""
        rebuild = functools.partial(
            type(self), self.expected, source=self.source, line=self.line, field=self.field, got=self.got
        )
        return rebuild, ()


# --------------------------------------------------------------------------- document tree


@dataclass(frozen=True)
class _Node:
    """A parsed YAML/JSON value with the line it starts on (None when unknown)."""

    kind: Literal["scalar", "seq", "map"]
    line: int | None
    value: str | int | float | bool | None = None
    text: str = ""
    items: tuple[_Node, ...] = ()
    entries: tuple[_Entry, ...] = ()


@dataclass(frozen=True)
class _Entry:
    """One ``key: value`` of a mapping."""

    key: str
    line: int | None
    node: _Node


@dataclass(frozen=True)
class _Ctx:
    """Where the document comes from, for error messages."""

    source: str

    def fail(self, line: int | None, path: str, expected: str, got: str | None = None) -> NoReturn:
        raise WorkflowError(expected, source=self.source, line=line, field=path, got=got)


def _child(path: str, key: str) -> str:
    """The path of ``key`` inside ``path`` (``a.b``, or ``a["odd key"]``)."""
    if _IDENT_RE.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_quote(key)}]"


def _quote(text: str, limit: int = 40) -> str:
    """A one-line, ASCII, JSON-quoted rendering of ``text``, shortened past ``limit`` characters."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(short)


def _describe(node: _Node) -> str:
    """How a found value reads in an error message."""
    if node.kind == "map":
        return "a mapping"
    if node.kind == "seq":
        return "a list"
    if node.value is None:
        return "null"
    if isinstance(node.value, bool):
        return "true" if node.value else "false"
    if isinstance(node.value, str):
        return _quote(node.value)
    return node.text if len(node.text) <= 40 else node.text[:40] + "..."


def _fix_surrogates(text: str) -> str:
    """Join UTF-16 surrogate pairs that YAML escapes leave apart (lone ones stay, and fail validation)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        try:
            return text.encode("utf-16", "surrogatepass").decode("utf-16")
        except UnicodeDecodeError:
            return text
    return text


def _has_bad_text(text: str) -> bool:
    """True when ``text`` holds a NUL or a lone surrogate (neither survives the trip to a shell)."""
    return "\x00" in text or any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


# --------------------------------------------------------------------------- YAML reading


_TAG = "tag:yaml.org,2002:"


class _Loader(yaml.SafeLoader):
    """YAML 1.2 core-schema scalars (JSON compatible: ``yes``/``no``/``on`` stay text), no aliases, bounded depth."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
        mark: Any = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "no aliases (*name are not supported)", mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"at most {MAX_DEPTH} levels of nesting", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_Loader.yaml_implicit_resolvers = {}
for _tag, _pattern in (
    ("null", r"(?:~|null|Null|NULL|)\Z"),
    ("bool", r"(?:true|True|TRUE|false|False|FALSE)\Z"),
    ("int", r"(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z"),
    ("float", r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?\Z"),
    ("float", r"(?:[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z"),
):
    _Loader.add_implicit_resolver(_TAG + _tag, re.compile(_pattern), None)


def _yaml_scalar(ctx: _Ctx, node: yaml.ScalarNode, path: str, line: int) -> _Node:
    """Construct a scalar by its resolved tag (str, null, bool, int, float)."""
    text = str(node.value)
    kind = node.tag[len(_TAG) :] if node.tag.startswith(_TAG) else node.tag
    value: str | int | float | bool | None
    if kind == "str":
        value = _fix_surrogates(text)
    elif kind == "null" and re.fullmatch(r"~|null|Null|NULL|", text):
        value = None
    elif kind == "bool" and text.lower() in ("true", "false"):
        value = text.lower() == "true"
    elif kind == "int" and re.fullmatch(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+", text):
        # Too many digits for any field: keep it as an out-of-range number rather than parse it.
        value = math.inf if len(text) > 100 else int(text, 0) if text[:2] in ("0o", "0x") else int(text)
    elif kind == "float" and len(text) <= 100:
        value = _yaml_float(ctx, text, path, line)
    else:
        ctx.fail(line, path, f"a plain value (YAML tag {_quote(node.tag)} is not supported here)", got=_quote(text))
    return _Node("scalar", line, value=value, text=text)


def _yaml_float(ctx: _Ctx, text: str, path: str, line: int) -> float:
    lowered = text.lower().lstrip("+")
    if lowered in (".inf", "-.inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        ctx.fail(line, path, "a number", got=_quote(text))


def _from_yaml(ctx: _Ctx, node: yaml.Node, path: str = "") -> _Node:
    """Convert a composed YAML node (marks give lines) into a :class:`_Node` tree."""
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        return _yaml_scalar(ctx, node, path, line)
    if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
        return _Node("seq", line, items=tuple(_from_yaml(ctx, n, f"{path}[{i}]") for i, n in enumerate(node.value)))
    if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
        entries: list[_Entry] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _TAG + "str":
                ctx.fail(key_line, path, "text as a mapping key", got=_describe(_from_yaml(ctx, key_node, path)))
            key = _fix_surrogates(str(key_node.value))
            entries.append(_Entry(key, key_line, _from_yaml(ctx, value_node, _child(path, key))))
        return _mapping_node(ctx, path, line, entries)
    ctx.fail(line, path, f"a plain list or mapping (YAML tag {_quote(node.tag)} is not supported)")


def _mapping_node(ctx: _Ctx, path: str, line: int | None, entries: Sequence[_Entry]) -> _Node:
    seen: set[str] = set()
    for entry in entries:
        if entry.key in seen:
            ctx.fail(entry.line, _child(path, entry.key), "each key once in a mapping", got="a duplicate key")
        seen.add(entry.key)
    return _Node("map", line, entries=tuple(entries))


def _yaml_error(ctx: _Ctx, err: yaml.YAMLError, text: str) -> WorkflowError:
    """A WorkflowError for a YAML syntax error, at the line the parser points to."""
    line: int | None = None
    detail = str(err).splitlines()[0] if str(err) else "a syntax error"
    if isinstance(err, yaml.MarkedYAMLError):
        mark = err.problem_mark or err.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = err.problem or err.context or detail
    elif isinstance(err, yaml.reader.ReaderError):
        line = text.count("\n", 0, max(err.position, 0)) + 1
        detail = f"no control character #x{err.character:04x}" if isinstance(err.character, int) else detail
    return WorkflowError(f"valid YAML or JSON ({detail})", source=ctx.source, line=line)


def _compose(text: str) -> yaml.Node | None:
    loader = _Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def _as_yaml(text: str) -> str:
    """JSON text rewritten so that YAML reads it exactly as JSON would, line for line; other text as is.

    In valid JSON, tabs only occur between tokens (YAML refuses them there) and
    characters outside printable ASCII only inside strings, where YAML would
    refuse or fold some of them: they become spaces and ``\\u`` escapes.
    """
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return text
    return _JSON_ESCAPE_RE.sub(lambda m: json.dumps(m.group())[1:-1], text.replace("\t", " "))


_JSON_ESCAPE_RE = re.compile(r"[^\x20-\x7e\n\r]")


def _parse(ctx: _Ctx, text: str) -> _Node:
    """Parse YAML or JSON text into a :class:`_Node` tree."""
    text = text.removeprefix("\ufeff")
    try:
        root = _compose(_as_yaml(text))
    except yaml.YAMLError as err:
        raise _yaml_error(ctx, err, text) from None
    if root is None:
        ctx.fail(1, "", "a workflow (a mapping with resources and steps)", got="an empty document")
    return _from_yaml(ctx, root)


# --------------------------------------------------------------------------- canonical JSON reading


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as its list of pairs (so that duplicate keys can be reported)."""


def _from_json(ctx: _Ctx, value: Any, path: str = "", depth: int = 0) -> _Node:
    """Convert ``json.loads`` output into a :class:`_Node` tree (no lines)."""
    if depth > MAX_DEPTH:
        ctx.fail(None, path, f"at most {MAX_DEPTH} levels of nesting")
    if isinstance(value, _Pairs):
        entries = [_Entry(k, None, _from_json(ctx, item, _child(path, k), depth + 1)) for k, item in value]
        return _mapping_node(ctx, path, None, entries)
    if isinstance(value, list):
        items = tuple(_from_json(ctx, item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        return _Node("seq", None, items=items)
    return _Node("scalar", None, value=value, text=json.dumps(value))


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# --------------------------------------------------------------------------- field validation


def _fields(ctx: _Ctx, node: _Node, path: str, known: Sequence[str], required: Sequence[str]) -> dict[str, _Node]:
    """The entries of a mapping, rejecting unknown fields (with a suggestion) and missing required ones."""
    if node.kind != "map":
        ctx.fail(node.line, path, f"a mapping with the fields {', '.join(known)}", got=_describe(node))
    found: dict[str, _Node] = {}
    for entry in node.entries:
        if entry.key not in known:
            ctx.fail(entry.line, _child(path, entry.key), f"one of {', '.join(known)}", got=_unknown(entry.key, known))
        found[entry.key] = entry.node
    for name in required:
        if name not in found:
            ctx.fail(node.line, _child(path, name), f"{_EXPECTED[name]}, which is required", got="nothing")
    return found


def _unknown(key: str, known: Sequence[str]) -> str:
    """``unknown field X``, with the closest known field as a suggestion."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    hint = f" (did you mean {lowered[close[0]]}?)" if close else ""
    return f"unknown field {_quote(key)}{hint}"


def _integer(ctx: _Ctx, node: _Node, path: str, minimum: int) -> int:
    """An integer in ``[minimum, MAX_RESOURCE]``; integral floats count, as in JSON Schema."""
    value = node.value
    if node.kind == "scalar" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if node.kind != "scalar" or not isinstance(value, int) or isinstance(value, bool):
        ctx.fail(node.line, path, f"an integer >= {minimum}", got=_describe(node))
    if value < minimum:
        ctx.fail(node.line, path, f"an integer >= {minimum}", got=_describe(node))
    if value > MAX_RESOURCE:
        ctx.fail(node.line, path, f"an integer <= {MAX_RESOURCE}", got=_describe(node))
    return value


def _text(ctx: _Ctx, node: _Node, path: str, expected: str) -> str:
    """A string without NUL characters or lone surrogates."""
    if node.kind != "scalar" or not isinstance(node.value, str):
        ctx.fail(node.line, path, expected, got=_describe(node))
    if _has_bad_text(node.value):
        ctx.fail(node.line, path, f"{expected} without NUL characters or lone surrogates", got=_describe(node))
    return node.value


def _list(ctx: _Ctx, node: _Node, path: str, expected: str) -> tuple[_Node, ...]:
    if node.kind != "seq":
        ctx.fail(node.line, path, expected, got=_describe(node))
    return node.items


def _name(ctx: _Ctx, node: _Node) -> str:
    expected = "a name of 1 to 64 characters without control characters"
    name = _text(ctx, node, "name", expected)
    if not 1 <= len(name) <= 64 or _NAME_FORBIDDEN_RE.search(name):
        ctx.fail(node.line, "name", expected, got=_describe(node))
    return name


def _resources(ctx: _Ctx, node: _Node) -> tuple[int, int, int, int]:
    """``(tasks, cpusPerTask, memPerCpu, gpus)``, with the job's totals bounded too."""
    found = _fields(ctx, node, "resources", _RESOURCE_FIELDS, ("tasks", "cpusPerTask", "memPerCpu"))
    tasks = _integer(ctx, found["tasks"], "resources.tasks", 1)
    cpus_per_task = _integer(ctx, found["cpusPerTask"], "resources.cpusPerTask", 1)
    mem_per_cpu = _integer(ctx, found["memPerCpu"], "resources.memPerCpu", 1)
    gpus = _integer(ctx, found["gpus"], "resources.gpus", 0) if "gpus" in found else 0
    cpus = tasks * cpus_per_task
    if cpus > MAX_RESOURCE:
        ctx.fail(node.line, "resources", f"tasks x cpusPerTask <= {MAX_RESOURCE}", got=str(cpus))
    if cpus * mem_per_cpu > MAX_RESOURCE:
        expected = f"tasks x cpusPerTask x memPerCpu <= {MAX_RESOURCE} MB"
        ctx.fail(node.line, "resources", expected, got=str(cpus * mem_per_cpu))
    return tasks, cpus_per_task, mem_per_cpu, gpus


def _labels(ctx: _Ctx, node: _Node) -> tuple[LabelConstraint, ...]:
    constraints: list[LabelConstraint] = []
    for index, item in enumerate(_list(ctx, node, "labels", "a list of label expressions 'key op value'")):
        path = f"labels[{index}]"
        text = _text(ctx, item, path, "a label expression 'key op value'")
        try:
            constraints.append(parse_constraint(text))
        except LabelExpressionError as err:
            ctx.fail(item.line, path, err.expected, got=_quote(text))
    return tuple(constraints)


def _env(ctx: _Ctx, node: _Node, path: str) -> dict[str, str]:
    """Environment variables: names ``[A-Za-z_][A-Za-z0-9_]*`` (not ``DSQ_...``), text values."""
    if node.kind != "map":
        ctx.fail(node.line, path, "a mapping of environment variables NAME: value", got=_describe(node))
    env: dict[str, str] = {}
    for entry in node.entries:
        var_path = _child(path, entry.key)
        if not _ENV_NAME_RE.fullmatch(entry.key):
            ctx.fail(entry.line, var_path, "a variable name matching [A-Za-z_][A-Za-z0-9_]* (at most 128 characters)")
        if entry.key.startswith("DSQ_"):
            ctx.fail(entry.line, var_path, "a variable name not starting with DSQ_ (reserved for dsq-chain)")
        env[entry.key] = _text(ctx, entry.node, var_path, "a text value (quote numbers and booleans)")
    return env


@dataclass(frozen=True)
class _StepDraft:
    """A validated step with the lines of what later cross-checks may complain about."""

    step: Step
    name_line: int | None
    dep_lines: tuple[int | None, ...]


def _step(ctx: _Ctx, node: _Node, path: str) -> _StepDraft:
    found = _fields(ctx, node, path, _STEP_FIELDS, ("name", "run"))
    name_node = found["name"]
    name = _text(ctx, name_node, f"{path}.name", "a step name of 1 to 64 characters A-Z a-z 0-9 _ -")
    if not _STEP_NAME_RE.fullmatch(name):
        ctx.fail(name_node.line, f"{path}.name", "a step name of 1 to 64 characters A-Z a-z 0-9 _ -", got=_quote(name))
    run = _fields(ctx, found["run"], f"{path}.run", _RUN_FIELDS, ("command",))
    command_node = run["command"]
    command = _text(ctx, command_node, f"{path}.run.command", "a command line (text)")
    if not _NON_SPACE_RE.search(command):
        ctx.fail(command_node.line, f"{path}.run.command", "a non-blank command line", got=_quote(command))
    shell = DEFAULT_SHELL
    if "shell" in run:
        shell = _text(ctx, run["shell"], f"{path}.run.shell", "an absolute path to a shell")
        if not _SHELL_RE.fullmatch(shell):
            expected = "an absolute path to a shell (/ then A-Z a-z 0-9 . _ + / -, at most 255 characters)"
            ctx.fail(run["shell"].line, f"{path}.run.shell", expected, got=_quote(shell))
    env = _env(ctx, run["env"], f"{path}.run.env") if "env" in run else {}
    deps, dep_lines = _depends_on(ctx, found.get("dependsOn"), f"{path}.dependsOn")
    return _StepDraft(Step(name, command, shell, env, deps), name_node.line, dep_lines)


def _depends_on(ctx: _Ctx, node: _Node | None, path: str) -> tuple[tuple[str, ...], tuple[int | None, ...]]:
    if node is None:
        return (), ()
    names: dict[str, int | None] = {}
    for index, item in enumerate(_list(ctx, node, path, "a list of step names")):
        name = _text(ctx, item, f"{path}[{index}]", "a step name")
        if name in names:
            ctx.fail(item.line, f"{path}[{index}]", "each step once", got=_quote(name))
        names[name] = item.line
    return tuple(names), tuple(names.values())


def _steps(ctx: _Ctx, node: _Node) -> tuple[Step, ...]:
    """The steps: unique names, dependencies on other existing steps, no cycle."""
    items = _list(ctx, node, "steps", _EXPECTED["steps"])
    if not items:
        ctx.fail(node.line, "steps", _EXPECTED["steps"], got="an empty list")
    drafts = [_step(ctx, item, f"steps[{index}]") for index, item in enumerate(items)]
    first: dict[str, int] = {}
    for index, draft in enumerate(drafts):
        name = draft.step.name
        if name in first:
            ctx.fail(draft.name_line, f"steps[{index}].name", f"a unique step name ({name} is steps[{first[name]}])")
        first[name] = index
    for index, draft in enumerate(drafts):
        for dep_index, (dep, line) in enumerate(zip(draft.step.depends_on, draft.dep_lines, strict=True)):
            dep_path = f"steps[{index}].dependsOn[{dep_index}]"
            if dep == draft.step.name:
                ctx.fail(line, dep_path, "the name of another step (a step cannot depend on itself)", got=_quote(dep))
            if dep not in first:
                ctx.fail(line, dep_path, f"the name of a step: one of {_some(list(first))}", got=_quote(dep))
    steps = tuple(draft.step for draft in drafts)
    cycle = _find_cycle(steps)
    if cycle:
        index = first[cycle[0]]
        line = drafts[index].dep_lines[0] if drafts[index].dep_lines else items[index].line
        ctx.fail(line, f"steps[{index}].dependsOn", "no dependency cycle", got=" -> ".join(cycle))
    return steps


def _some(names: Sequence[str], limit: int = 10) -> str:
    """``a, b, c`` (the first ``limit`` names, then ``...``)."""
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def _find_cycle(steps: Sequence[Step]) -> list[str]:
    """A dependency cycle ``[a, b, ..., a]`` starting at its earliest step, or ``[]``."""
    deps = {step.name: step.depends_on for step in steps}
    done: set[str] = set()
    for step in steps:
        stack: list[tuple[str, int]] = [(step.name, 0)]
        on_path = [step.name]
        while stack:
            name, next_index = stack[-1]
            if next_index >= len(deps[name]) or name in done:
                done.add(name)
                stack.pop()
                on_path.pop()
                continue
            stack[-1] = (name, next_index + 1)
            dep = deps[name][next_index]
            if dep in on_path:
                return _rotate_cycle(on_path[on_path.index(dep) :], steps)
            if dep not in done:
                stack.append((dep, 0))
                on_path.append(dep)
    return []


def _rotate_cycle(cycle: list[str], steps: Sequence[Step]) -> list[str]:
    """``[b, c, a]`` -> ``[a, b, c, a]`` when ``a`` is the earliest declared step of the cycle."""
    order = {step.name: index for index, step in enumerate(steps)}
    start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
    rotated = cycle[start:] + cycle[:start]
    return [*rotated, rotated[0]]


def _build(ctx: _Ctx, root: _Node) -> Workflow:
    """Validate a document tree into a :class:`Workflow` (including the canonical size limit)."""
    found = _fields(ctx, root, "", _TOP_FIELDS, ("resources", "steps"))
    name = _name(ctx, found["name"]) if "name" in found else None
    tasks, cpus_per_task, mem_per_cpu, gpus = _resources(ctx, found["resources"])
    labels = _labels(ctx, found["labels"]) if "labels" in found else ()
    env = _env(ctx, found["env"], "env") if "env" in found else {}
    steps = _steps(ctx, found["steps"])
    workflow = Workflow(name, tasks, cpus_per_task, mem_per_cpu, gpus, labels, env, steps)
    size = len(workflow.canonical())
    if size > MAX_WORKFLOW_BYTES:
        ctx.fail(None, "", f"at most {MAX_WORKFLOW_BYTES} bytes in canonical form", got=f"{size} bytes")
    return workflow


# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class Step:
    """One step: a command run by a shell, with its own environment, after the steps it depends on."""

    name: str
    command: str
    shell: str = DEFAULT_SHELL
    env: dict[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()

    def __hash__(self) -> int:
        return hash((self.name, self.command, self.shell, tuple(sorted(self.env.items())), self.depends_on))

    def to_data(self) -> dict[str, Any]:
        """The step in the document format, every default explicit."""
        run = {"command": self.command, "shell": self.shell, "env": dict(self.env)}
        return {"name": self.name, "run": run, "dependsOn": list(self.depends_on)}


@dataclass(frozen=True)
class Workflow:
    """A validated workflow. Build it with :func:`load`, :func:`loads` or :func:`from_canonical`."""

    name: str | None
    tasks: int
    cpus_per_task: int
    mem_per_cpu: int
    gpus: int
    labels: tuple[LabelConstraint, ...]
    env: dict[str, str]
    steps: tuple[Step, ...]

    def __hash__(self) -> int:
        return hash(self.canonical())

    @property
    def resources(self) -> Resources:
        """The job's totals: cpus = tasks x cpusPerTask, mem_mb = cpus x memPerCpu."""
        cpus = self.tasks * self.cpus_per_task
        return Resources(cpus=cpus, gpus=self.gpus, mem_mb=cpus * self.mem_per_cpu)

    def to_data(self) -> dict[str, Any]:
        """The workflow in the document format (JSON-ready), every default explicit."""
        data: dict[str, Any] = {
            "resources": {
                "tasks": self.tasks,
                "cpusPerTask": self.cpus_per_task,
                "memPerCpu": self.mem_per_cpu,
                "gpus": self.gpus,
            },
            "labels": [str(c) for c in self.labels],
            "env": dict(self.env),
            "steps": [step.to_data() for step in self.steps],
        }
        if self.name is not None:
            data["name"] = self.name
        return data

    def canonical(self) -> bytes:
        """Deterministic compact UTF-8 JSON: sorted keys, no whitespace, defaults explicit."""
        text = json.dumps(self.to_data(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")

    def hash(self) -> bytes:
        """keccak256 of :meth:`canonical`: what the chain stores for the job."""
        return keccak(self.canonical())


# --------------------------------------------------------------------------- loading


def loads(text: str | bytes, source: str = "<input>") -> Workflow:
    """Parse and validate a workflow from YAML or JSON text.

    Raises :class:`WorkflowError` (with ``source``, line, field and what was
    expected) for anything malformed, including input over
    :data:`MAX_SOURCE_BYTES` or a canonical form over :data:`MAX_WORKFLOW_BYTES`.
    """
    ctx = _Ctx(source)
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        if len(raw) > MAX_SOURCE_BYTES:
            ctx.fail(None, "", f"a document of at most {MAX_SOURCE_BYTES} bytes", got=f"{len(raw)} bytes")
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as err:
            ctx.fail(None, "", "UTF-8 text", got=f"an invalid byte at offset {err.start}")
    if not isinstance(text, str):
        ctx.fail(None, "", "YAML or JSON text", got=type(text).__name__)
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_SOURCE_BYTES:
        ctx.fail(None, "", f"a document of at most {MAX_SOURCE_BYTES} bytes", got=f"{size} bytes")
    return _build(ctx, _parse(ctx, text))


def load(path: str | os.PathLike[str]) -> Workflow:
    """Read and validate a workflow file (YAML or JSON); errors name the file.

    Raises :class:`WorkflowError`, or :class:`OSError` if the file cannot be read.
    """
    with open(path, "rb") as fh:
        data = fh.read(MAX_SOURCE_BYTES + 1)
    return loads(data, source=os.fspath(path))


def from_canonical(data: bytes) -> Workflow:
    """Decode a workflow from its canonical bytes (as found on chain).

    Raises :class:`WorkflowError` unless ``data`` is exactly the canonical
    encoding of a valid workflow.
    """
    ctx = _Ctx("<canonical>")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        ctx.fail(None, "", "bytes", got=type(data).__name__)
    raw = bytes(data)
    if len(raw) > MAX_WORKFLOW_BYTES:
        ctx.fail(None, "", f"at most {MAX_WORKFLOW_BYTES} bytes", got=f"{len(raw)} bytes")
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=_Pairs, parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        ctx.fail(None, "", "UTF-8 JSON", got=f"an invalid byte at offset {err.start}")
    except (ValueError, RecursionError) as err:
        ctx.fail(None, "", "canonical JSON", got=str(err).splitlines()[0] if str(err) else "invalid JSON")
    workflow = _build(ctx, _from_json(ctx, value))
    if workflow.canonical() != raw:
        ctx.fail(None, "", "the canonical encoding (sorted keys, no whitespace, every default explicit)")
    return workflow


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the workflow format, from the package data."""
    resource = importlib_resources.files("dsq_chain").joinpath("schemas/workflow.schema.json")
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


# --------------------------------------------------------------------------- batch script


def execution_order(steps: Sequence[Step]) -> list[Step]:
    """Steps in dependency order; among steps whose dependencies are done, the earliest declared first."""
    pending = list(steps)
    done: set[str] = set()
    ordered: list[Step] = []
    while pending:
        ready = next((s for s in pending if all(d in done for d in s.depends_on)), None)
        if ready is None:
            raise ValueError(f"dependency cycle or unknown dependency among steps {[s.name for s in pending]}")
        pending.remove(ready)
        done.add(ready.name)
        ordered.append(ready)
    return ordered


def _export_lines(env: Mapping[str, str], indent: str = "") -> list[str]:
    return [f"{indent}export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]


def render_script(wf: Workflow, job_id: int) -> str:
    """A bash batch script that runs the workflow's steps for job ``job_id``.

    Exports the job's env and ``DSQ_JOB_ID``; runs each step in dependency
    order, in a subshell with its own env (and ``DSQ_STEP``), its command
    handed to its shell as one quoted ``-c`` argument with stdin from
    /dev/null; stops at the first failing step and exits with its code.
    Raises :class:`WorkflowError` if ``wf`` is not a valid workflow and
    :class:`ValueError` for a negative job id.
    """
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise ValueError(f"job id must be a non-negative integer, got {job_id!r}")
    wf = _revalidated(wf)
    steps = execution_order(wf.steps)
    lines = [
        "#!/bin/bash",
        f"# dsq-chain job {job_id}, workflow 0x{wf.hash().hex()} (generated: do not edit)",
        "# Runs the steps in dependency order and stops at the first failing step with its exit code.",
        f"export DSQ_JOB_ID={job_id}",
        *_export_lines(wf.env),
    ]
    for number, step in enumerate(steps, 1):
        lines += [
            f"# step {number}/{len(steps)}: {step.name}",
            "(",
            f"  export DSQ_STEP={shlex.quote(step.name)}",
            *_export_lines(step.env, "  "),
            f"  exec {shlex.quote(step.shell)} -c {shlex.quote(step.command)} </dev/null",
            ") || exit $?",
        ]
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def _revalidated(wf: Workflow) -> Workflow:
    """``wf`` as the validator sees it: guards against hand-built workflows with unsafe names."""
    try:
        canonical = wf.canonical()
    except UnicodeEncodeError:
        raise WorkflowError("text without lone surrogates", source="<workflow>") from None
    return from_canonical(canonical)


# --------------------------------------------------------------------------- cost preview


def max_runtime_seconds(credits_units: int, rate_units_per_minute: int) -> int:
    """Seconds of run time that ``credits_units`` buy at a rate in units per minute (rounded down)."""
    if rate_units_per_minute <= 0:
        raise ValueError(f"rate must be positive, got {rate_units_per_minute}")
    if credits_units < 0:
        raise ValueError(f"credits must not be negative, got {credits_units}")
    return credits_units * 60 // rate_units_per_minute


def format_credits(units: int) -> str:
    """Credit units as credits, without trailing zeros: ``1500000`` -> ``1.5``."""
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), CREDIT_UNIT)
    decimals = f"{frac:0{len(str(CREDIT_UNIT)) - 1}d}".rstrip("0")
    return f"{sign}{whole}.{decimals}" if decimals else f"{sign}{whole}"


def format_duration(seconds: int) -> str:
    """``3725`` -> ``1 h 2 min 5 s``."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count} {unit}")
    if seconds or not parts:
        parts.append(f"{seconds} s")
    return " ".join(parts)


@dataclass(frozen=True)
class CostPreview:
    """What an escrow buys: the provider's rate for the job and the run time it pays for."""

    rate_per_minute: int
    max_runtime_seconds: int
    credits: int
    resources: Resources | None = None

    def __str__(self) -> str:
        what = ""
        if self.resources is not None:
            r = self.resources
            what = f"{r.cpus} cpu{'s' * (r.cpus != 1)}, {r.gpus} gpu{'s' * (r.gpus != 1)}, {r.mem_mb} MB at "
        return (
            f"{what}{format_credits(self.rate_per_minute)} credits/min: "
            f"{format_credits(self.credits)} credits buy {format_duration(self.max_runtime_seconds)}"
        )


def cost_preview(wf: Workflow, credits_units: int, prices: Prices) -> CostPreview:
    """The rate ``prices`` charge for ``wf`` and how long ``credits_units`` of escrow last.

    Raises :class:`ValueError` when the rate is zero (nothing to preview).
    """
    resources = wf.resources
    rate = prices.rate_for(resources)
    return CostPreview(rate, max_runtime_seconds(credits_units, rate), credits_units, resources)
