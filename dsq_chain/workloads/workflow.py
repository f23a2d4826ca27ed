"""Workflows: what a job runs, in YAML or JSON, in DeepSquare's job format (plus provider labels).

This module validates a workflow document (reporting every error of a file at
once, each with its file, line and field), encodes it canonically (the bytes
whose keccak256 the chain stores), decodes it back from those bytes, and
previews what a given escrow buys on a given provider. Rendering into the bash
script that executors run is :mod:`dsq_chain.workloads.script`; the step tree
is :mod:`dsq_chain.workloads.steps`.

DeepSquare documents load as they are written: ``enableLogging``, ``env`` as a
list of ``{key, value}``, free-text step names, per-step ``resources``,
containers, ``for``, ``launch``/``dependsOn``, ``catch``/``finally``, ``if``,
``use`` of vendored or local modules, ``input``/``output`` storage. What a
provider cannot honour (virtual networks, WireGuard, bore, custom DNS, X11...)
is refused with the reason. The format is documented in ``docs/workflow.md``;
its JSON Schema ships as package data (:func:`json_schema`) and accepts the
same documents, except for the rules a schema cannot state (its ``$comment``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources as importlib_resources
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak

from dsq_chain import artifacts
from dsq_chain.types import CREDIT_UNIT, LabelConstraint, Prices, Resources
from dsq_chain.workloads.document import (
    MAX_RESOURCE,
    Ctx,
    Node,
    Pairs,
    WorkflowError,
    boolean_of,
    child,
    fields_of,
    from_json,
    integer_of,
    items_of,
    parse,
    quote,
    reject_constant,
    text_of,
)
from dsq_chain.workloads.labels import LabelExpressionError, parse_constraint
from dsq_chain.workloads.step_checks import ENV_NAME_RE, JobLimits, StepsContext, env_of, steps_of
from dsq_chain.workloads.steps import DEFAULT_SHELL, Step, walk

__all__ = [
    "DEFAULT_SHELL",
    "MAX_RESOURCE",
    "MAX_SOURCE_BYTES",
    "MAX_WORKFLOW_BYTES",
    "CostPreview",
    "Module",
    "Step",
    "Transport",
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

_NAME_FORBIDDEN_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_HTTP_URL_RE = re.compile(r"https?://[^\s\x00-\x1f'\"]{1,2000}")
_S3_BUCKET_RE = re.compile(r"s3://[a-z0-9][a-z0-9.-]{1,62}")
_S3_PATH_RE = re.compile(r"/[^\x00-\x1f]{0,1023}")
_LOCAL_SOURCE_RE = re.compile(r"\.{0,2}/.*")

_TOP_FIELDS = (
    "name",
    "resources",
    "labels",
    "env",
    "enableLogging",
    "input",
    "inputMode",
    "output",
    "continuousOutputSync",
    "modules",
    "steps",
)
_RESOURCE_FIELDS = ("tasks", "cpusPerTask", "memPerCpu", "gpus", "gpusPerTask")
#: Top-level fields a provider of this grid cannot honour, with the reason.
REFUSED_TOP = {
    "virtualNetworks": (
        "virtual networks between steps and jobs need DeepSquare's network gateway, which providers of this "
        "grid do not run"
    ),
}


# --------------------------------------------------------------------------- storage


@dataclass(frozen=True)
class Transport:
    """Where input comes from or output goes: an http(s) URL, or an S3 bucket and path with its credentials."""

    url: str
    """``https://...`` or ``s3://bucket/path``."""
    region: str | None = None
    endpoint: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    delete_sync: bool = False
    """S3 output: remove objects that have no file in the output folder any more."""

    @property
    def is_s3(self) -> bool:
        return self.url.startswith("s3://")

    def to_data(self) -> dict[str, Any]:
        if not self.is_s3:
            return {"http": {"url": self.url}}
        bucket, _, path = self.url[len("s3://") :].partition("/")
        return {
            "s3": {
                "region": self.region,
                "bucketUrl": f"s3://{bucket}",
                "path": f"/{path}",
                "accessKeyId": self.access_key_id,
                "secretAccessKey": self.secret_access_key,
                "endpointUrl": self.endpoint,
                **({"deleteSync": True} if self.delete_sync else {}),
            }
        }


def _transport(ctx: Ctx, node: Node, path: str) -> Transport:
    found = fields_of(ctx, node, path, ("http", "s3"), ())
    if len(found) != 1:
        ctx.fail(node.line, path, "exactly one of http and s3", got="both" if found else "neither")
    if "http" in found:
        http = fields_of(ctx, found["http"], f"{path}.http", ("url",), ("url",))
        url = text_of(ctx, http["url"], f"{path}.http.url", "an http(s) URL")
        if not _HTTP_URL_RE.fullmatch(url):
            ctx.fail(http["url"].line, f"{path}.http.url", "an http(s) URL", got=quote(url))
        return Transport(url)
    spath = f"{path}.s3"
    keys = ("region", "bucketUrl", "path", "accessKeyId", "secretAccessKey", "endpointUrl")
    s3 = fields_of(ctx, found["s3"], spath, (*keys, "deleteSync"), keys)
    values = {k: ctx.guard(lambda k=k: text_of(ctx, s3[k], f"{spath}.{k}", "text")) for k in keys}  # type: ignore[misc]
    bucket, s3_path, endpoint = values["bucketUrl"], values["path"], values["endpointUrl"]
    if bucket is not None and not _S3_BUCKET_RE.fullmatch(bucket):
        expected = "s3://bucket-name (not ending with /)"
        ctx.note(s3["bucketUrl"].line, f"{spath}.bucketUrl", expected, got=quote(bucket))
    if s3_path is not None and not _S3_PATH_RE.fullmatch(s3_path):
        expected = "an absolute path in the bucket (starting with /)"
        ctx.note(s3["path"].line, f"{spath}.path", expected, got=quote(s3_path))
    if endpoint is not None and not _HTTP_URL_RE.fullmatch(endpoint):
        ctx.note(s3["endpointUrl"].line, f"{spath}.endpointUrl", "an http(s) URL", got=quote(endpoint))
    delete_sync = False
    if "deleteSync" in s3:
        delete_sync = bool(ctx.guard(lambda: boolean_of(ctx, s3["deleteSync"], f"{spath}.deleteSync")))
    if any(v is None for v in values.values()):
        ctx.fail(node.line, spath, "a valid S3 location")
    return Transport(
        f"{bucket}{s3_path}", values["region"], endpoint, values["accessKeyId"], values["secretAccessKey"], delete_sync
    )


# --------------------------------------------------------------------------- modules


@dataclass(frozen=True)
class ModuleInput:
    key: str
    description: str
    default: str | None = None


@dataclass(frozen=True)
class Module:
    """A DeepSquare module: a named group of steps with inputs (variables) and outputs (exported variables)."""

    name: str
    description: str
    min_resources: JobLimits
    inputs: tuple[ModuleInput, ...]
    outputs: tuple[tuple[str, str], ...]
    steps: tuple[Step, ...]

    def to_data(self) -> dict[str, Any]:
        m = self.min_resources
        return {
            "name": self.name,
            "description": self.description,
            "minimumResources": {"tasks": m.tasks, "cpusPerTask": m.cpus_per_task, "memPerCpu": m.mem_per_cpu,
                                 "gpus": m.gpus},
            "inputs": [
                {"key": i.key, "description": i.description, **({} if i.default is None else {"default": i.default})}
                for i in self.inputs
            ],
            "outputs": [{"key": k, "description": d} for k, d in self.outputs],
            "steps": [s.to_data() for s in self.steps],
        }


_MODULE_FIELDS = ("name", "description", "minimumResources", "inputs", "outputs", "steps")


def _module(ctx: Ctx, limits: JobLimits, node: Node, path: str) -> Module:
    found = fields_of(ctx, node, path, _MODULE_FIELDS, ("name", "description", "minimumResources", "steps"))
    name = text_of(ctx, found["name"], f"{path}.name", "a module name")
    description = text_of(ctx, found["description"], f"{path}.description", "a description")
    rpath = f"{path}.minimumResources"
    res = fields_of(ctx, found["minimumResources"], rpath, ("tasks", "cpusPerTask", "memPerCpu", "gpus"), ())
    mins = [integer_of(ctx, res[k], f"{rpath}.{k}", 0) if k in res else 0
            for k in ("tasks", "cpusPerTask", "memPerCpu", "gpus")]
    inputs: list[ModuleInput] = []
    if "inputs" in found:
        for index, item in enumerate(items_of(ctx, found["inputs"], f"{path}.inputs", "a list of inputs")):
            ipath = f"{path}.inputs[{index}]"
            entry = fields_of(ctx, item, ipath, ("key", "description", "default"), ("key", "description"))
            key = text_of(ctx, entry["key"], f"{ipath}.key", "a variable name")
            if not ENV_NAME_RE.fullmatch(key) or key.startswith("DSQ_"):
                expected = "a variable name [A-Za-z_][A-Za-z0-9_]* not starting with DSQ_"
                ctx.fail(entry["key"].line, f"{ipath}.key", expected, got=quote(key))
            default = text_of(ctx, entry["default"], f"{ipath}.default", "text") if "default" in entry else None
            inputs.append(ModuleInput(key, text_of(ctx, entry["description"], f"{ipath}.description", "text"), default))
    outputs: list[tuple[str, str]] = []
    if "outputs" in found:
        for index, item in enumerate(items_of(ctx, found["outputs"], f"{path}.outputs", "a list of outputs")):
            opath = f"{path}.outputs[{index}]"
            entry = fields_of(ctx, item, opath, ("key", "description"), ("key", "description"))
            outputs.append((text_of(ctx, entry["key"], f"{opath}.key", "a variable name"),
                            text_of(ctx, entry["description"], f"{opath}.description", "text")))
    # A module's own steps may not use other modules (no nesting to resolve at run time).
    steps = steps_of(ctx, StepsContext(limits, {}), found["steps"], f"{path}.steps")
    return Module(name, description, JobLimits(*mins), tuple(inputs), tuple(outputs), steps)


def _modules(ctx: Ctx, limits: JobLimits, node: Node, broken: set[str]) -> dict[str, Module]:
    """The vendored modules that are valid; the sources of the others go to ``broken``."""
    if node.kind != "map":
        ctx.fail(node.line, "modules", "a mapping of module source: module")
    modules: dict[str, Module] = {}
    for entry in node.entries:
        module = ctx.guard(lambda e=entry: _module(ctx, limits, e.node, child("modules", e.key)))  # type: ignore[misc]
        if module is not None:
            modules[entry.key] = module
        else:
            broken.add(entry.key)
    return modules


def read_module_file(base: Path, source: str) -> bytes:
    """The bytes of a local module ``source`` (a file, or a folder holding ``module.yaml``) relative to ``base``."""
    target = (base / source).resolve() if not os.path.isabs(source) else Path(source)
    if target.is_dir():
        target = target / "module.yaml"
    with open(target, "rb") as fh:
        return fh.read(MAX_SOURCE_BYTES + 1)


# --------------------------------------------------------------------------- top level


def _name(ctx: Ctx, node: Node) -> str:
    expected = "a name of 1 to 64 characters without control characters"
    name = text_of(ctx, node, "name", expected)
    if not 1 <= len(name) <= 64 or _NAME_FORBIDDEN_RE.search(name):
        ctx.fail(node.line, "name", expected, got=quote(name))
    return name


def _resources(ctx: Ctx, node: Node) -> tuple[int, int, int, int]:
    """``(tasks, cpusPerTask, memPerCpu, gpus)``, with the job's totals bounded too."""
    found = fields_of(ctx, node, "resources", _RESOURCE_FIELDS, ("tasks", "cpusPerTask", "memPerCpu"))
    tasks = integer_of(ctx, found["tasks"], "resources.tasks", 1)
    cpus_per_task = integer_of(ctx, found["cpusPerTask"], "resources.cpusPerTask", 1)
    mem_per_cpu = integer_of(ctx, found["memPerCpu"], "resources.memPerCpu", 1)
    gpus = integer_of(ctx, found["gpus"], "resources.gpus", 0) if "gpus" in found else 0
    if "gpusPerTask" in found:
        per_task = integer_of(ctx, found["gpusPerTask"], "resources.gpusPerTask", 0)
        if "gpus" in found:
            ctx.fail(found["gpusPerTask"].line, "resources.gpusPerTask", "gpus or the retired gpusPerTask, not both")
        gpus = per_task * tasks
        ctx.warn(found["gpusPerTask"].line, "resources.gpusPerTask",
                 f"gpusPerTask is retired: write gpus: {gpus} (GPUs for the whole job = tasks x gpusPerTask)")
    cpus = tasks * cpus_per_task
    if cpus > MAX_RESOURCE:
        ctx.fail(node.line, "resources", f"tasks x cpusPerTask <= {MAX_RESOURCE}", got=str(cpus))
    if cpus * mem_per_cpu > MAX_RESOURCE:
        expected = f"tasks x cpusPerTask x memPerCpu <= {MAX_RESOURCE} MB"
        ctx.fail(node.line, "resources", expected, got=str(cpus * mem_per_cpu))
    if gpus > MAX_RESOURCE:
        ctx.fail(node.line, "resources", f"gpus <= {MAX_RESOURCE}", got=str(gpus))
    return tasks, cpus_per_task, mem_per_cpu, gpus


def _labels(ctx: Ctx, node: Node) -> tuple[LabelConstraint, ...]:
    constraints: list[LabelConstraint] = []
    for index, item in enumerate(items_of(ctx, node, "labels", "a list of label expressions 'key op value'")):
        path = f"labels[{index}]"
        text = text_of(ctx, item, path, "a label expression 'key op value'")
        try:
            constraints.append(parse_constraint(text))
        except LabelExpressionError as err:
            ctx.note(item.line, path, err.expected, got=quote(text))
    return tuple(constraints)


def _input_mode(ctx: Ctx, node: Node) -> int:
    mode = integer_of(ctx, node, "inputMode", 0)
    if mode > 0o777:
        ctx.fail(node.line, "inputMode", "a file mode below 512 (0o777)", got=str(mode))
    return mode


def _build(ctx: Ctx, root: Node, base: Path | None = None) -> Workflow:
    """Validate a document tree into a :class:`Workflow`, recording every error, then raising them all."""
    found = fields_of(ctx, root, "", _TOP_FIELDS, ("resources", "steps"), REFUSED_TOP)
    name = ctx.guard(lambda: _name(ctx, found["name"])) if "name" in found else None
    resources = ctx.guard(lambda: _resources(ctx, found["resources"]))
    tasks, cpus_per_task, mem_per_cpu, gpus = resources or (1, 1, 1, 0)
    limits = JobLimits(tasks, cpus_per_task, mem_per_cpu, gpus)
    labels = (ctx.guard(lambda: _labels(ctx, found["labels"])) or ()) if "labels" in found else ()
    env = (ctx.guard(lambda: env_of(ctx, found["env"], "env")) or {}) if "env" in found else {}
    flags = {}
    for key in ("enableLogging", "continuousOutputSync"):
        if key in found:
            flags[key] = bool(ctx.guard(lambda k=key: boolean_of(ctx, found[k], k)))  # type: ignore[misc]
    transports = {}
    for key in ("input", "output"):
        if key in found:
            transports[key] = ctx.guard(lambda k=key: _transport(ctx, found[k], k))  # type: ignore[misc]
    input_mode = ctx.guard(lambda: _input_mode(ctx, found["inputMode"])) if "inputMode" in found else None
    out = transports.get("output")
    if flags.get("continuousOutputSync") and out is not None and not out.is_s3:
        ctx.warn(found["continuousOutputSync"].line, "continuousOutputSync",
                 "an http output is uploaded once, after the last step (as DeepSquare does): "
                 "only S3 syncs continuously")
    broken: set[str] = set()
    modules = (ctx.guard(lambda: _modules(ctx, limits, found["modules"], broken)) or {}) if "modules" in found else {}
    sctx = StepsContext(limits, modules, broken)
    if base is not None and "steps" in found:
        _vendor_local_modules(ctx, limits, found["steps"], base, modules, broken)
    steps = ctx.guard(lambda: steps_of(ctx, sctx, found["steps"], "steps"))
    ctx.raise_errors()
    assert resources is not None and steps is not None
    workflow = Workflow(
        name, tasks, cpus_per_task, mem_per_cpu, gpus, labels, env, steps,
        enable_logging=flags.get("enableLogging", False),
        input=transports.get("input"),
        input_mode=input_mode,
        output=transports.get("output"),
        continuous_output_sync=flags.get("continuousOutputSync", False),
        modules=_used_modules(modules, steps),
        warnings=tuple(ctx.warnings),
    )
    size = len(workflow.canonical())
    if size > MAX_WORKFLOW_BYTES:
        ctx.fail(None, "", f"at most {MAX_WORKFLOW_BYTES} bytes in canonical form", got=f"{size} bytes")
    return workflow


def _vendor_local_modules(
    ctx: Ctx, limits: JobLimits, node: Node, base: Path, modules: dict[str, Module], broken: set[str]
) -> None:
    """Read every ``use.source`` that is a local path (``./x``, ``../x``, ``/x``) into ``modules``."""
    for source, line, path in _use_sources(node, "steps"):
        if source in modules or not _LOCAL_SOURCE_RE.fullmatch(source):
            continue
        try:
            data = read_module_file(base, source)
        except OSError as err:
            ctx.note(line, path, "a readable local module (a file, or a folder with module.yaml)",
                     got=f"{quote(source)}: {err.strerror or err}")
            broken.add(source)
            continue
        sub = Ctx(f"{source}")
        try:
            text = data.decode("utf-8-sig")
            module = _module(sub, limits, parse(sub, text), "")
            sub.raise_errors()
        except UnicodeDecodeError:
            ctx.note(line, path, "a UTF-8 module file", got=quote(source))
            broken.add(source)
            continue
        except WorkflowError as err:
            ctx.errors.extend(err.errors)
            broken.add(source)
            continue
        modules[source] = module


def _use_sources(node: Node, path: str) -> list[tuple[str, int | None, str]]:
    """``(source, line, path)`` of every ``use`` in a document's step tree, without validating it."""
    found: list[tuple[str, int | None, str]] = []
    if node.kind == "seq":
        for index, item in enumerate(node.items):
            found += _use_sources(item, f"{path}[{index}]")
    elif node.kind == "map":
        for entry in node.entries:
            if entry.key == "use" and entry.node.kind == "map":
                for sub in entry.node.entries:
                    if sub.key == "source" and isinstance(sub.node.value, str):
                        found.append((sub.node.value, sub.node.line, f"{path}.use.source"))
            found += _use_sources(entry.node, child(path, entry.key))
    return found


def _used_modules(modules: Mapping[str, Module], steps: tuple[Step, ...]) -> dict[str, Module]:
    """The modules the steps use (vendored modules nobody uses are dropped from the canonical form)."""
    used = {s.use.source for s in walk(steps) if s.use is not None}
    return {source: module for source, module in modules.items() if source in used}


# --------------------------------------------------------------------------- the model


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
    enable_logging: bool = False
    input: Transport | None = None
    input_mode: int | None = None
    output: Transport | None = None
    continuous_output_sync: bool = False
    modules: dict[str, Module] = field(default_factory=dict)
    warnings: tuple[str, ...] = field(default=(), compare=False)
    """Retired fields that still work, each with the hint to replace it (not part of the canonical form)."""

    def __hash__(self) -> int:
        return hash(self.canonical())

    @property
    def resources(self) -> Resources:
        """The job's totals: cpus = tasks x cpusPerTask, mem_mb = cpus x memPerCpu."""
        cpus = self.tasks * self.cpus_per_task
        return Resources(cpus=cpus, gpus=self.gpus, mem_mb=cpus * self.mem_per_cpu)

    def to_data(self) -> dict[str, Any]:
        """The workflow in the document format (JSON-ready); the original format's defaults explicit."""
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
        if self.enable_logging:
            data["enableLogging"] = True
        for key, transport in (("input", self.input), ("output", self.output)):
            if transport is not None:
                data[key] = transport.to_data()
        if self.input_mode is not None:
            data["inputMode"] = self.input_mode
        if self.continuous_output_sync:
            data["continuousOutputSync"] = True
        if self.modules:
            data["modules"] = {source: module.to_data() for source, module in self.modules.items()}
        return data

    def canonical(self) -> bytes:
        """Deterministic compact UTF-8 JSON: sorted keys, no whitespace."""
        text = json.dumps(self.to_data(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return text.encode("utf-8")

    def hash(self) -> bytes:
        """keccak256 of :meth:`canonical`: what the chain stores for the job."""
        return keccak(self.canonical())


# --------------------------------------------------------------------------- loading


def loads(text: str | bytes, source: str = "<input>", *, base: str | os.PathLike[str] | None = None) -> Workflow:
    """Parse and validate a workflow from YAML or JSON text.

    Raises :class:`WorkflowError` (with ``source``, line, field and what was
    expected) for anything malformed, including input over
    :data:`MAX_SOURCE_BYTES` or a canonical form over :data:`MAX_WORKFLOW_BYTES`.
    """
    ctx = Ctx(source)
    base_dir = Path(base) if base is not None else None
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
    return _build(ctx, parse(ctx, text), base_dir)


def load(path: str | os.PathLike[str]) -> Workflow:
    """Read and validate a workflow file (YAML or JSON); errors name the file.

    Raises :class:`WorkflowError`, or :class:`OSError` if the file cannot be read.
    """
    with open(path, "rb") as fh:
        data = fh.read(MAX_SOURCE_BYTES + 1)
    return loads(data, source=os.fspath(path), base=Path(path).resolve().parent)


def from_canonical(data: bytes) -> Workflow:
    """Decode a workflow from its canonical bytes (as found on chain).

    Raises :class:`WorkflowError` unless ``data`` is exactly the canonical
    encoding of a valid workflow.
    """
    ctx = Ctx("<canonical>")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        ctx.fail(None, "", "bytes", got=type(data).__name__)
    raw = bytes(data)
    if len(raw) > MAX_WORKFLOW_BYTES:
        ctx.fail(None, "", f"at most {MAX_WORKFLOW_BYTES} bytes", got=f"{len(raw)} bytes")
    try:
        value = json.loads(raw.decode("utf-8"), object_pairs_hook=Pairs, parse_constant=reject_constant)
    except UnicodeDecodeError as err:
        ctx.fail(None, "", "UTF-8 JSON", got=f"an invalid byte at offset {err.start}")
    except (ValueError, RecursionError) as err:
        ctx.fail(None, "", "canonical JSON", got=str(err).splitlines()[0] if str(err) else "invalid JSON")
    workflow = _build(ctx, from_json(ctx, value))
    if workflow.canonical() != raw:
        ctx.fail(None, "", "the canonical encoding (sorted keys, no whitespace, every default explicit)")
    return workflow


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the workflow format, from the package data."""
    resource = importlib_resources.files("dsq_chain").joinpath("schemas/workflow.schema.json")
    schema: dict[str, Any] = json.loads(resource.read_text(encoding="utf-8"))
    return schema


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


def render_script(wf: Workflow, job_id: int) -> str:
    """The bash script that runs ``wf`` as job ``job_id``: see :func:`dsq_chain.workloads.script.render_script`."""
    from dsq_chain.workloads import script  # the renderer imports this module

    return script.render_script(wf, job_id)


def execution_order(steps: Sequence[Step]) -> list[Step]:
    """Steps in run order: see :func:`dsq_chain.workloads.script.execution_order`."""
    from dsq_chain.workloads import script

    return script.execution_order(steps)
