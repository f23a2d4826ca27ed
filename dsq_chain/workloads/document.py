"""Reading workflow documents: YAML/JSON into a tree of nodes that remember their lines, and precise errors.

Shared by every format under :mod:`dsq_chain.workloads`: :class:`WorkflowError`
(file, line, field, expected, found), a YAML 1.2-core reader without aliases
and with bounded depth, a canonical-JSON reader, and the field helpers that
validation is built from. A :class:`Ctx` collects every error of a document
(:meth:`Ctx.guard`) so that one round reports them all.
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, TypeVar

import yaml

#: Upper bound of every resource number and of the job's totals (uint32).
MAX_RESOURCE = 2**32 - 1
#: Deepest nesting of YAML/JSON collections read (DeepSquare step trees need about 16).
MAX_DEPTH = 32

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_T = TypeVar("_T")

#: What a required field holds, for "expected ..., which is required" messages.
EXPECTED = {
    "resources": "a mapping with tasks, cpusPerTask, memPerCpu and optionally gpus",
    "steps": "a list of at least one step",
    "tasks": "an integer >= 1",
    "cpusPerTask": "an integer >= 1",
    "memPerCpu": "an integer >= 1 (MB per CPU)",
    "name": "a name",
    "run": "a mapping with command and optionally shell and env",
    "command": "a command line (text)",
    "image": "a container image reference",
    "source": "a module source (a path or a vendored module's source)",
    "key": "a variable name",
    "value": "a text value",
    "begin": "an integer",
    "end": "an integer",
    "url": "an http(s) URL",
    "hostDir": "a directory on the provider's side",
    "containerDir": "an absolute path inside the container",
    "description": "a description (text)",
    "minimumResources": "a mapping with tasks, cpusPerTask, memPerCpu and gpus",
}

# --------------------------------------------------------------------------- errors


class WorkflowError(ValueError):
    """A workflow document is malformed.

    Attributes: ``source`` (file name or ``"<input>"``), ``line`` (1-based, or
    None), ``field`` (dotted path such as ``resources.tasks`` or
    ``steps[1].run.command``; empty for the whole document), ``expected``
    (what was expected) and ``got`` (what was found, or None). ``str()`` is
    one line: ``job.yaml:4: resources.tasks: expected an integer >= 1, got 0``.

    A document with several errors raises one :class:`WorkflowError` whose
    attributes are the first error's, whose :attr:`errors` lists them all (in
    document order) and whose ``str()`` has one line per error.
    """

    errors: tuple[WorkflowError, ...]

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
        self.errors = (self,)

    @classmethod
    def of(cls, errors: Sequence[WorkflowError]) -> WorkflowError:
        """One error carrying ``errors`` (sorted by line, duplicates dropped)."""
        unique = list({str(e): e for e in errors}.values())
        unique.sort(key=lambda e: (e.line is None, e.line or 0))
        first = unique[0]
        if len(unique) == 1:
            return first
        err = cls(first.expected, source=first.source, line=first.line, field=first.field, got=first.got)
        err.errors = tuple(unique)
        err.args = ("\n".join(str(e) for e in unique),)
        return err

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with every attribute (for process pools and test workers)."""
        rebuild = functools.partial(
            type(self), self.expected, source=self.source, line=self.line, field=self.field, got=self.got
        )
        if len(self.errors) > 1:
            return _rebuild_many, (tuple(e.__reduce__()[0]() for e in self.errors),)
        return rebuild, ()


def _rebuild_many(errors: tuple[WorkflowError, ...]) -> WorkflowError:
    return WorkflowError.of(errors)


# --------------------------------------------------------------------------- document tree


@dataclass(frozen=True)
class Node:
    """A parsed YAML/JSON value with the line it starts on (None when unknown)."""

    kind: Literal["scalar", "seq", "map"]
    line: int | None
    value: str | int | float | bool | None = None
    text: str = ""
    items: tuple[Node, ...] = ()
    entries: tuple[Entry, ...] = ()


@dataclass(frozen=True)
class Entry:
    """One ``key: value`` of a mapping."""

    key: str
    line: int | None
    node: Node


@dataclass
class Ctx:
    """Where the document comes from, and the errors found so far (every one is reported)."""

    source: str
    errors: list[WorkflowError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def fail(self, line: int | None, path: str, expected: str, got: str | None = None) -> NoReturn:
        raise WorkflowError(expected, source=self.source, line=line, field=path, got=got)

    def note(self, line: int | None, path: str, expected: str, got: str | None = None) -> None:
        """Record an error and carry on validating the rest of the document."""
        self.errors.append(WorkflowError(expected, source=self.source, line=line, field=path, got=got))

    def warn(self, line: int | None, path: str, message: str) -> None:
        """Record a warning (a retired field that still works, with the hint to replace it)."""
        location = self.source if line is None else f"{self.source}:{line}"
        self.warnings.append(f"{location}: {path}: {message}")

    def guard(self, check: Callable[[], _T]) -> _T | None:
        """``check()``, or None after recording the :class:`WorkflowError` it raised."""
        try:
            return check()
        except WorkflowError as err:
            self.errors.extend(err.errors)
            return None

    def raise_errors(self) -> None:
        """Raise every recorded error at once (the first one's attributes, every line in the message)."""
        if self.errors:
            raise WorkflowError.of(self.errors)


def child(path: str, key: str) -> str:
    """The path of ``key`` inside ``path`` (``a.b``, or ``a["odd key"]``)."""
    if _IDENT_RE.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{quote(key)}]"


def quote(text: str, limit: int = 40) -> str:
    """A one-line, ASCII, JSON-quoted rendering of ``text``, shortened past ``limit`` characters."""
    short = text if len(text) <= limit else text[:limit] + "..."
    return json.dumps(short)


def describe(node: Node) -> str:
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
        return quote(node.value)
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


def has_bad_text(text: str) -> bool:
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


def _yaml_scalar(ctx: Ctx, node: yaml.ScalarNode, path: str, line: int) -> Node:
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
        ctx.fail(line, path, f"a plain value (YAML tag {quote(node.tag)} is not supported here)", got=quote(text))
    return Node("scalar", line, value=value, text=text)


def _yaml_float(ctx: Ctx, text: str, path: str, line: int) -> float:
    lowered = text.lower().lstrip("+")
    if lowered in (".inf", "-.inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    if lowered == ".nan":
        return math.nan
    try:
        return float(text)
    except ValueError:
        ctx.fail(line, path, "a number", got=quote(text))


def _from_yaml(ctx: Ctx, node: yaml.Node, path: str = "") -> Node:
    """Convert a composed YAML node (marks give lines) into a :class:`Node` tree."""
    line = node.start_mark.line + 1
    if isinstance(node, yaml.ScalarNode):
        return _yaml_scalar(ctx, node, path, line)
    if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
        return Node("seq", line, items=tuple(_from_yaml(ctx, n, f"{path}[{i}]") for i, n in enumerate(node.value)))
    if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
        entries: list[Entry] = []
        for key_node, value_node in node.value:
            key_line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _TAG + "str":
                ctx.fail(key_line, path, "text as a mapping key", got=describe(_from_yaml(ctx, key_node, path)))
            key = _fix_surrogates(str(key_node.value))
            entries.append(Entry(key, key_line, _from_yaml(ctx, value_node, child(path, key))))
        return _mapping_node(ctx, path, line, entries)
    ctx.fail(line, path, f"a plain list or mapping (YAML tag {quote(node.tag)} is not supported)")


def _mapping_node(ctx: Ctx, path: str, line: int | None, entries: Sequence[Entry]) -> Node:
    seen: set[str] = set()
    for entry in entries:
        if entry.key in seen:
            ctx.fail(entry.line, child(path, entry.key), "each key once in a mapping", got="a duplicate key")
        seen.add(entry.key)
    return Node("map", line, entries=tuple(entries))


def _yaml_error(ctx: Ctx, err: yaml.YAMLError, text: str) -> WorkflowError:
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


def parse(ctx: Ctx, text: str) -> Node:
    """Parse YAML or JSON text into a :class:`Node` tree."""
    text = text.removeprefix("\ufeff")
    try:
        root = _compose(_as_yaml(text))
    except yaml.YAMLError as err:
        raise _yaml_error(ctx, err, text) from None
    if root is None:
        ctx.fail(1, "", "a workflow (a mapping with resources and steps)", got="an empty document")
    return _from_yaml(ctx, root)


# --------------------------------------------------------------------------- canonical JSON reading


class Pairs(list[tuple[str, Any]]):
    """A JSON object as its list of pairs (so that duplicate keys can be reported)."""


def from_json(ctx: Ctx, value: Any, path: str = "", depth: int = 0) -> Node:
    """Convert ``json.loads`` output into a :class:`Node` tree (no lines)."""
    if depth > MAX_DEPTH:
        ctx.fail(None, path, f"at most {MAX_DEPTH} levels of nesting")
    if isinstance(value, Pairs):
        entries = [Entry(k, None, from_json(ctx, item, child(path, k), depth + 1)) for k, item in value]
        return _mapping_node(ctx, path, None, entries)
    if isinstance(value, list):
        items = tuple(from_json(ctx, item, f"{path}[{i}]", depth + 1) for i, item in enumerate(value))
        return Node("seq", None, items=items)
    return Node("scalar", None, value=value, text=json.dumps(value))


def reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# --------------------------------------------------------------------------- field validation


def fields_of(
    ctx: Ctx,
    node: Node,
    path: str,
    known: Sequence[str],
    required: Sequence[str],
    refused: Mapping[str, str] | None = None,
) -> dict[str, Node]:
    """The entries of a mapping; records unknown fields (with a suggestion) and refused ones (with the reason).

    A missing required field raises at once (the caller cannot go on without it).
    """
    refused = refused or {}
    if node.kind != "map":
        ctx.fail(node.line, path, f"a mapping with the fields {', '.join(known)}", got=describe(node))
    found: dict[str, Node] = {}
    for entry in node.entries:
        if entry.key in refused:
            ctx.note(entry.line, child(path, entry.key), f"no {entry.key}: refused, {refused[entry.key]}")
        elif entry.key not in known:
            ctx.note(
                entry.line, child(path, entry.key), f"one of {', '.join(known)}", got=unknown_field(entry.key, known)
            )
        else:
            found[entry.key] = entry.node
    for name in required:
        if name not in found:
            expected = EXPECTED.get(name, "a value")
            ctx.fail(node.line, child(path, name), f"{expected}, which is required", got="nothing")
    return found


def unknown_field(key: str, known: Sequence[str]) -> str:
    """``unknown field X``, with the closest known field as a suggestion."""
    lowered = {k.lower(): k for k in known}
    close = difflib.get_close_matches(key.lower(), list(lowered), n=1, cutoff=0.6)
    hint = f" (did you mean {lowered[close[0]]}?)" if close else ""
    return f"unknown field {quote(key)}{hint}"


def integer_of(ctx: Ctx, node: Node, path: str, minimum: int) -> int:
    """An integer in ``[minimum, MAX_RESOURCE]``; integral floats count, as in JSON Schema."""
    value = node.value
    if node.kind == "scalar" and isinstance(value, float) and value.is_integer():
        value = int(value)
    if node.kind != "scalar" or not isinstance(value, int) or isinstance(value, bool):
        ctx.fail(node.line, path, f"an integer >= {minimum}", got=describe(node))
    if value < minimum:
        ctx.fail(node.line, path, f"an integer >= {minimum}", got=describe(node))
    if value > MAX_RESOURCE:
        ctx.fail(node.line, path, f"an integer <= {MAX_RESOURCE}", got=describe(node))
    return value


def boolean_of(ctx: Ctx, node: Node, path: str) -> bool:
    """``true`` or ``false``."""
    if node.kind != "scalar" or not isinstance(node.value, bool):
        ctx.fail(node.line, path, "true or false", got=describe(node))
    return node.value


def text_of(ctx: Ctx, node: Node, path: str, expected: str) -> str:
    """A string without NUL characters or lone surrogates."""
    if node.kind != "scalar" or not isinstance(node.value, str):
        ctx.fail(node.line, path, expected, got=describe(node))
    if has_bad_text(node.value):
        ctx.fail(node.line, path, f"{expected} without NUL characters or lone surrogates", got=describe(node))
    return node.value


def items_of(ctx: Ctx, node: Node, path: str, expected: str) -> tuple[Node, ...]:
    if node.kind != "seq":
        ctx.fail(node.line, path, expected, got=describe(node))
    return node.items
