"""Checking a workflow's step tree, field by field, with every error recorded (file, line, field).

What each field may hold is DeepSquare's job format (docs/workflow.md has the
table); what a provider of this grid cannot honour is refused with the reason
(:data:`REFUSED_RUN`, :data:`REFUSED_CONTAINER`). The model it builds is
:mod:`dsq_chain.workloads.steps`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from dsq_chain.workloads.document import (
    MAX_RESOURCE,
    Ctx,
    Node,
    WorkflowError,
    boolean_of,
    child,
    describe,
    fields_of,
    integer_of,
    items_of,
    quote,
    text_of,
)
from dsq_chain.workloads.steps import (
    DEFAULT_SHELL,
    MAX_ITERATIONS,
    MPI_TYPES,
    Container,
    ForLoop,
    Launch,
    Mount,
    Step,
    StepResources,
    Use,
    range_values,
)

ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_SHELL_RE = re.compile(r"/[A-Za-z0-9._+/-]{0,254}")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NON_SPACE_RE = re.compile(r"\S")
_HANDLE_RE = re.compile(r"[A-Za-z0-9_]{1,64}")
_IMAGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}")
_REGISTRY_RE = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,252})(:[0-9]{1,5})?")
_CONTAINER_PATH_RE = re.compile(r"/[^\x00-\x1f:]{0,1023}")
#: Where a mount's hostDir may point: the job's own storage, named by its variable.
_MOUNT_HOST_RE = re.compile(
    r"\$(STORAGE_PATH|DEEPSQUARE_(INPUT|OUTPUT|TMP|SHARED_TMP|SHARED_WORLD_TMP|DISK_TMP|DISK_WORLD_TMP))(/[A-Za-z0-9._/-]{0,1000})?"
)

STEP_FIELDS = ("name", "dependsOn", "if", "steps", "run", "for", "launch", "use", "catch", "finally")
RUN_FIELDS = (
    "command",
    "shell",
    "env",
    "workDir",
    "mapUid",
    "mapGid",
    "resources",
    "container",
    "mpi",
    "network",
    "disableCpuBinding",
)
STEP_RESOURCE_FIELDS = ("tasks", "cpusPerTask", "memPerCpu", "gpus", "gpusPerTask")
CONTAINER_FIELDS = (
    "image",
    "registry",
    "username",
    "password",
    "mounts",
    "apptainer",
    "deepsquareHosted",
    "x11",
    "mountHome",
    "readOnlyRootFS",
)
_ACTIONS = ("steps", "run", "for", "launch", "use")

#: Fields of ``run`` that a provider of this grid cannot honour, with the reason.
REFUSED_RUN = {
    "dns": "custom DNS servers need DeepSquare's user-mode network stack (slirp4netns/pasta), not run here",
    "customNetworkInterfaces": (
        "WireGuard, bore and DeepSquare virtual-network interfaces need network gateways that providers "
        "of this grid do not run"
    ),
}
#: Container options that must stay false here, with the reason.
REFUSED_CONTAINER = {
    "deepsquareHosted": "DeepSquare-hosted images live on DeepSquare's own software store; name an OCI image",
    "x11": "X11 needs a display server on the provider's host; providers run jobs without one",
}
_REFUSED_NETWORK = "network: host (the default): refused, slirp4netns and pasta user-mode networks are not run here"


# --------------------------------------------------------------------------- validation


@dataclass(frozen=True)
class JobLimits:
    """What the whole job has: a step may not ask for more."""

    tasks: int
    cpus_per_task: int
    mem_per_cpu: int
    gpus: int

    @property
    def cpus(self) -> int:
        return self.tasks * self.cpus_per_task


def env_of(ctx: Ctx, node: Node, path: str, what: str = "environment variables") -> dict[str, str]:
    """Environment variables as a mapping ``NAME: value`` or DeepSquare's list of ``{key, value}``."""
    env: dict[str, str] = {}
    if node.kind == "map":
        for entry in node.entries:
            var_path = child(path, entry.key)
            ok = ctx.guard(lambda e=entry, p=var_path: _env_name(ctx, e.key, e.line, p))  # type: ignore[misc]
            value = ctx.guard(partial(text_of, ctx, entry.node, var_path, "a text value (quote numbers and booleans)"))
            if ok and value is not None:
                env[entry.key] = value
        return env
    if node.kind != "seq":
        ctx.fail(node.line, path, f"{what}: a list of {{key, value}} or a mapping NAME: value", got=describe(node))
    for index, item in enumerate(node.items):
        item_path = f"{path}[{index}]"
        pair = ctx.guard(lambda i=item, p=item_path: _env_pair(ctx, i, p))  # type: ignore[misc]
        if pair is None:
            continue
        key, value = pair
        if key in env:
            ctx.note(item.line, f"{item_path}.key", "each variable once", got=quote(key))
        env[key] = value
    return env


def _env_pair(ctx: Ctx, node: Node, path: str) -> tuple[str, str]:
    found = fields_of(ctx, node, path, ("key", "value"), ("key", "value"))
    key = text_of(ctx, found["key"], f"{path}.key", "a variable name")
    _env_name(ctx, key, found["key"].line, f"{path}.key")
    value_node = found["value"]
    if (
        value_node.kind == "scalar"
        and isinstance(value_node.value, (int, float))
        and not isinstance(value_node.value, bool)
    ) or isinstance(value_node.value, bool):
        return key, value_node.text  # DeepSquare reads a YAML number or boolean as its text
    return key, text_of(ctx, value_node, f"{path}.value", "a text value")


def _env_name(ctx: Ctx, name: str, line: int | None, path: str) -> bool:
    if not ENV_NAME_RE.fullmatch(name):
        ctx.fail(line, path, "a variable name matching [A-Za-z_][A-Za-z0-9_]* (at most 128 characters)")
    if name.startswith("DSQ_"):
        ctx.fail(line, path, "a variable name not starting with DSQ_ (reserved for dsq-chain)")
    return True


def _name(ctx: Ctx, node: Node, path: str) -> str:
    expected = "a step name of 1 to 256 characters without control characters"
    name = text_of(ctx, node, path, expected)
    if not 1 <= len(name) <= 256 or _CONTROL_RE.search(name):
        ctx.fail(node.line, path, expected, got=quote(name))
    return name


def _nonblank(ctx: Ctx, node: Node, path: str, expected: str) -> str:
    value = text_of(ctx, node, path, expected)
    if not _NON_SPACE_RE.search(value):
        ctx.fail(
            node.line, path, f"a non-blank {expected.removeprefix('a ').removesuffix(' (text)')}", got=quote(value)
        )
    return value


def _matching(ctx: Ctx, node: Node, path: str, pattern: re.Pattern[str], expected: str) -> str:
    value = text_of(ctx, node, path, expected)
    if not pattern.fullmatch(value):
        ctx.fail(node.line, path, expected, got=quote(value))
    return value


@dataclass
class StepsContext:
    """What validating a step tree needs besides the document: the job's limits and the known modules."""

    limits: JobLimits
    modules: Mapping[str, Any]
    """source -> validated module (anything with ``min_resources`` and ``inputs``/``outputs``)."""
    broken: set[str] = field(default_factory=set)
    """Sources of modules whose own errors are already recorded (a use of them adds none)."""


def steps_of(ctx: Ctx, sctx: StepsContext, node: Node, path: str, *, allow_empty: bool = False) -> tuple[Step, ...]:
    """A list of steps, each checked (every error recorded), then the list's dependsOn names."""
    items = items_of(ctx, node, path, "a list of steps")
    if not items and not allow_empty:
        ctx.fail(node.line, path, "a list of at least one step", got="an empty list")
    parsed: list[tuple[Step, Node, str] | None] = []
    for index, item in enumerate(items):
        item_path = f"{path}[{index}]"
        step = ctx.guard(lambda i=item, p=item_path: _step(ctx, sctx, i, p))  # type: ignore[misc]
        parsed.append(None if step is None else (step, item, item_path))
    _check_depends_on(ctx, [p for p in parsed if p is not None])
    if any(p is None for p in parsed):
        return ()
    return tuple(p[0] for p in parsed if p is not None)


def _check_depends_on(ctx: Ctx, parsed: Sequence[tuple[Step, Node, str]]) -> None:
    """Each name is a launch handle of an earlier step in this list, or the name of one other step in it."""
    counts: dict[str, int] = {}
    for step, _, _ in parsed:
        if step.name is not None:
            counts[step.name] = counts.get(step.name, 0) + 1
    handles: set[str] = set()
    for step, node, path in parsed:
        dep_nodes = {e.key: e.node for e in node.entries}.get("dependsOn")
        for index, dep in enumerate(step.depends_on):
            line = dep_nodes.items[index].line if dep_nodes is not None and index < len(dep_nodes.items) else node.line
            dep_path = f"{path}.dependsOn[{index}]"
            if dep in handles:
                continue
            if dep == step.name and counts.get(dep, 0) == 1:
                ctx.note(line, dep_path, "the name of another step (a step cannot depend on itself)", got=quote(dep))
            elif counts.get(dep, 0) > 1:
                ctx.note(
                    line, dep_path, "the name of exactly one step of this list", got=f"{quote(dep)}, a name used twice"
                )
            elif dep not in counts:
                known = sorted(handles) + sorted(counts)
                expected = "a launch handleName of an earlier step in this list, or the name of a step in this list"
                ctx.note(line, dep_path, f"{expected} ({', '.join(known[:10]) or 'none here'})", got=quote(dep))
        if step.launch is not None and step.launch.handle is not None:
            handles.add(step.launch.handle)
    cycle = _find_cycle([s for s, _, _ in parsed], handles)
    if cycle:
        index = next(i for i, (s, _, _) in enumerate(parsed) if s.name == cycle[0])
        ctx.note(parsed[index][1].line, f"{parsed[index][2]}.dependsOn", "no dependency cycle", got=" -> ".join(cycle))


def _find_cycle(steps: Sequence[Step], handles: set[str]) -> list[str]:
    """A dependency cycle among named steps ``[a, b, ..., a]`` from its earliest step, or ``[]`` (iterative)."""
    order = {s.name: i for i, s in enumerate(steps) if s.name is not None}
    deps = {
        s.name: [d for d in s.depends_on if d in order and d not in handles and d != s.name] for s in steps if s.name
    }
    done: set[str] = set()
    for step in steps:
        if step.name is None or step.name in done:
            continue
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
                cycle = on_path[on_path.index(dep) :]
                start = min(range(len(cycle)), key=lambda i: order[cycle[i]])
                rotated = cycle[start:] + cycle[:start]
                return [*rotated, rotated[0]]
            if dep not in done:
                stack.append((dep, 0))
                on_path.append(dep)
    return []


def _step(ctx: Ctx, sctx: StepsContext, node: Node, path: str) -> Step:
    found = fields_of(ctx, node, path, STEP_FIELDS, ())
    name = ctx.guard(lambda: _name(ctx, found["name"], f"{path}.name")) if "name" in found else None
    actions = [key for key in _ACTIONS if key in found]
    if len(actions) > 1:
        ctx.note(node.line, path, "at most one of steps, run, for, launch, use in a step", got=", ".join(actions))
    depends_on: tuple[str, ...] = ()
    if "dependsOn" in found:
        depends_on = ctx.guard(lambda: _depends_on(ctx, found["dependsOn"], f"{path}.dependsOn")) or ()
    condition = ctx.guard(lambda: _nonblank(ctx, found["if"], f"{path}.if", "a bash test")) if "if" in found else None
    nested: dict[str, tuple[Step, ...] | None] = {}
    for key in ("steps", "catch", "finally"):
        if key in found:
            nested[key] = ctx.guard(
                partial(steps_of, ctx, sctx, found[key], f"{path}.{key}", allow_empty=key != "steps")
            )
    loop = ctx.guard(lambda: _for(ctx, sctx, found["for"], f"{path}.for")) if "for" in found else None
    launch = ctx.guard(lambda: _launch(ctx, sctx, found["launch"], f"{path}.launch")) if "launch" in found else None
    use = ctx.guard(lambda: _use(ctx, sctx, found["use"], f"{path}.use")) if "use" in found else None
    run = ctx.guard(lambda: _run(ctx, sctx, found["run"], f"{path}.run")) if "run" in found else None
    step = Step(
        name,
        depends_on=depends_on,
        condition=condition,
        steps=nested.get("steps"),
        loop=loop,
        launch=launch,
        use=use,
        catch=nested.get("catch"),
        finally_=nested.get("finally"),
    )
    if run is not None:
        step = _with_run(step, run)
    return step


def _with_run(step: Step, run: Step) -> Step:
    return Step(
        step.name,
        run.command,
        run.shell,
        run.env,
        step.depends_on,
        run.workdir,
        run.map_uid,
        run.map_gid,
        run.mpi,
        run.resources,
        run.container,
        run.disable_cpu_binding,
        step.condition,
        step.steps,
        step.loop,
        step.launch,
        step.use,
        step.catch,
        step.finally_,
    )


def _depends_on(ctx: Ctx, node: Node, path: str) -> tuple[str, ...]:
    names: list[str] = []
    for index, item in enumerate(items_of(ctx, node, path, "a list of launch handle names or step names")):
        name = text_of(ctx, item, f"{path}[{index}]", "a launch handle name or a step name")
        if name in names:
            ctx.fail(item.line, f"{path}[{index}]", "each step once", got=quote(name))
        names.append(name)
    return tuple(names)


def _run(ctx: Ctx, sctx: StepsContext, node: Node, path: str) -> Step:
    found = fields_of(ctx, node, path, RUN_FIELDS, ("command",), REFUSED_RUN)
    command = ctx.guard(lambda: _nonblank(ctx, found["command"], f"{path}.command", "a command line (text)"))
    shell = DEFAULT_SHELL
    if "shell" in found:
        shell_node = found["shell"]
        if shell_node.value == "ENTRYPOINT":
            ctx.note(
                shell_node.line,
                f"{path}.shell",
                "a shell path: refused, ENTRYPOINT (run the image's entrypoint) "
                "is not supported by the container runtime here; name the program in command",
            )
        else:
            expected = "an absolute path to a shell (/ then A-Z a-z 0-9 . _ + / -, at most 255 characters)"
            shell = ctx.guard(lambda: _matching(ctx, shell_node, f"{path}.shell", _SHELL_RE, expected)) or shell
    env = ctx.guard(lambda: env_of(ctx, found["env"], f"{path}.env")) if "env" in found else {}
    workdir = None
    if "workDir" in found:
        workdir = ctx.guard(
            lambda: _matching(
                ctx, found["workDir"], f"{path}.workDir", _CONTAINER_PATH_RE, "an absolute directory path"
            )
        )
    ids = {}
    for key in ("mapUid", "mapGid"):
        if key in found:
            ids[key] = ctx.guard(lambda k=key: integer_of(ctx, found[k], f"{path}.{k}", 0))  # type: ignore[misc]
    mpi = None
    if "mpi" in found:
        mpi = ctx.guard(lambda: _one_of(ctx, found["mpi"], f"{path}.mpi", MPI_TYPES))
    if "network" in found:
        ctx.guard(lambda: _one_of(ctx, found["network"], f"{path}.network", ("host",), _REFUSED_NETWORK))
    no_binding = False
    if "disableCpuBinding" in found:
        no_binding = bool(ctx.guard(lambda: boolean_of(ctx, found["disableCpuBinding"], f"{path}.disableCpuBinding")))
    resources = None
    if "resources" in found:
        resources = ctx.guard(lambda: _step_resources(ctx, sctx.limits, found["resources"], f"{path}.resources"))
    container = (
        ctx.guard(lambda: _container(ctx, found["container"], f"{path}.container")) if "container" in found else None
    )
    if command is None:
        raise WorkflowError.of(ctx.errors[-1:] if ctx.errors else [WorkflowError("a command", field=path)])
    return Step(
        None,
        command,
        shell,
        env or {},
        (),
        workdir,
        ids.get("mapUid"),
        ids.get("mapGid"),
        mpi,
        resources,
        container,
        no_binding,
    )


def _one_of(ctx: Ctx, node: Node, path: str, choices: Sequence[str], expected: str | None = None) -> str:
    value = text_of(ctx, node, path, f"one of {', '.join(choices)}")
    if value not in choices:
        ctx.fail(node.line, path, expected or f"one of {', '.join(choices)}", got=quote(value))
    return value


def _step_resources(ctx: Ctx, limits: JobLimits, node: Node, path: str) -> StepResources:
    found = fields_of(ctx, node, path, STEP_RESOURCE_FIELDS, ())
    values: dict[str, int | None] = {}
    for key, minimum in (("tasks", 1), ("cpusPerTask", 1), ("memPerCpu", 1), ("gpus", 0), ("gpusPerTask", 0)):
        if key in found:
            values[key] = ctx.guard(lambda k=key, m=minimum: integer_of(ctx, found[k], f"{path}.{k}", m))  # type: ignore[misc]
    tasks = values.get("tasks")
    gpus = values.get("gpus")
    if "gpusPerTask" in found:
        per_task = values.get("gpusPerTask")
        if "gpus" in found:
            ctx.note(found["gpusPerTask"].line, f"{path}.gpusPerTask", "gpus or the retired gpusPerTask, not both")
        elif per_task is not None:
            gpus = per_task * (tasks or 1)
            ctx.warn(
                found["gpusPerTask"].line,
                f"{path}.gpusPerTask",
                f"gpusPerTask is retired: write gpus: {gpus} (the step's GPUs = tasks x gpusPerTask)",
            )
    res = StepResources(tasks, values.get("cpusPerTask"), values.get("memPerCpu"), gpus)
    cpus = (res.tasks or 1) * (res.cpus_per_task or limits.cpus_per_task)
    mem = cpus * (res.mem_per_cpu or limits.mem_per_cpu)
    for what, asked, has, key in (
        ("CPUs (tasks x cpusPerTask)", cpus, limits.cpus, "cpusPerTask"),
        ("MB of memory (tasks x cpusPerTask x memPerCpu)", mem, limits.cpus * limits.mem_per_cpu, "memPerCpu"),
        ("GPUs", res.gpus or 0, limits.gpus, "gpus"),
    ):
        if asked > has:
            line = found[key].line if key in found else node.line
            ctx.note(
                line, path, f"at most the job's {has} {what}: a step cannot ask for more than the job", got=str(asked)
            )
    return res


def _container(ctx: Ctx, node: Node, path: str) -> Container:
    found = fields_of(ctx, node, path, CONTAINER_FIELDS, ("image",))
    image = _matching(
        ctx, found["image"], f"{path}.image", _IMAGE_RE, "a container image reference (name[:tag][@digest])"
    )
    registry = None
    if "registry" in found:
        registry = ctx.guard(
            lambda: _matching(ctx, found["registry"], f"{path}.registry", _REGISTRY_RE, "a registry host[:port]")
        )
    creds = {}
    for key in ("username", "password"):
        if key in found:
            creds[key] = ctx.guard(lambda k=key: text_of(ctx, found[k], f"{path}.{k}", "text"))  # type: ignore[misc]
    mounts: tuple[Mount, ...] = ()
    if "mounts" in found:
        mounts = ctx.guard(lambda: _mounts(ctx, found["mounts"], f"{path}.mounts")) or ()
    flags = {}
    for key in ("apptainer", "readOnlyRootFS", "mountHome"):
        if key in found:
            flags[key] = bool(ctx.guard(lambda k=key: boolean_of(ctx, found[k], f"{path}.{k}")))  # type: ignore[misc]
    for key, reason in REFUSED_CONTAINER.items():
        if key in found:
            value = ctx.guard(lambda k=key: boolean_of(ctx, found[k], f"{path}.{k}"))  # type: ignore[misc]
            if value:
                ctx.note(found[key].line, f"{path}.{key}", f"false: refused, {reason}", got="true")
    return Container(
        image,
        registry,
        creds.get("username"),
        creds.get("password"),
        mounts,
        flags.get("apptainer", False),
        flags.get("readOnlyRootFS", False),
        flags.get("mountHome", False),
    )


def _mounts(ctx: Ctx, node: Node, path: str) -> tuple[Mount, ...]:
    mounts: list[Mount] = []
    for index, item in enumerate(items_of(ctx, node, path, "a list of mounts")):
        item_path = f"{path}[{index}]"
        found = fields_of(ctx, item, item_path, ("hostDir", "containerDir", "options"), ("hostDir", "containerDir"))
        host = text_of(ctx, found["hostDir"], f"{item_path}.hostDir", "a folder of the job's storage")
        if not _MOUNT_HOST_RE.fullmatch(host):
            ctx.fail(
                found["hostDir"].line,
                f"{item_path}.hostDir",
                "$STORAGE_PATH or a $DEEPSQUARE_* folder (refused: a provider exposes no other host directory "
                "to jobs; DeepSquare retired host mounts too)",
                got=quote(host),
            )
        target = _matching(
            ctx,
            found["containerDir"],
            f"{item_path}.containerDir",
            _CONTAINER_PATH_RE,
            "an absolute path inside the container",
        )
        options = _one_of(ctx, found["options"], f"{item_path}.options", ("rw", "ro")) if "options" in found else "rw"
        mounts.append(Mount(host, target, options == "ro"))
    return tuple(mounts)


def _for(ctx: Ctx, sctx: StepsContext, node: Node, path: str) -> ForLoop:
    found = fields_of(ctx, node, path, ("parallel", "items", "range", "steps"), ("parallel", "steps"))
    parallel = ctx.guard(lambda: boolean_of(ctx, found["parallel"], f"{path}.parallel"))
    steps = ctx.guard(lambda: steps_of(ctx, sctx, found["steps"], f"{path}.steps"))
    if ("items" in found) == ("range" in found):
        ctx.fail(node.line, path, "exactly one of items and range", got="both" if "items" in found else "neither")
    loop: ForLoop
    if "items" in found:
        items = []
        for index, item in enumerate(items_of(ctx, found["items"], f"{path}.items", "a list of items (text)")):
            items.append(text_of(ctx, item, f"{path}.items[{index}]", "an item (text)"))
        if len(items) > MAX_ITERATIONS:
            ctx.fail(found["items"].line, f"{path}.items", f"at most {MAX_ITERATIONS} items", got=str(len(items)))
        loop = ForLoop(bool(parallel), steps or (), items=tuple(items))
    else:
        rpath = f"{path}.range"
        rng = fields_of(ctx, found["range"], rpath, ("begin", "end", "increment"), ("begin", "end"))
        begin = integer_of(ctx, rng["begin"], f"{rpath}.begin", -MAX_RESOURCE)
        end = integer_of(ctx, rng["end"], f"{rpath}.end", -MAX_RESOURCE)
        increment = integer_of(ctx, rng["increment"], f"{rpath}.increment", -MAX_RESOURCE) if "increment" in rng else 1
        if increment == 0:
            increment = 1  # DeepSquare counts by 1 when increment is 0
        count = len(range_values(begin, end, increment))
        if count > MAX_ITERATIONS:
            ctx.fail(found["range"].line, rpath, f"at most {MAX_ITERATIONS} iterations", got=str(count))
        loop = ForLoop(bool(parallel), steps or (), begin=begin, end=end, increment=increment)
    if parallel is None or steps is None:
        ctx.fail(node.line, path, "a valid loop")
    return loop


def _launch(ctx: Ctx, sctx: StepsContext, node: Node, path: str) -> Launch:
    found = fields_of(ctx, node, path, ("handleName", "signalOnParentStepExit", "steps"), ("steps",))
    handle = None
    if "handleName" in found:
        handle = ctx.guard(
            lambda: _matching(
                ctx,
                found["handleName"],
                f"{path}.handleName",
                _HANDLE_RE,
                "a handle name of 1 to 64 characters A-Z a-z 0-9 _",
            )
        )
    signal = 15
    if "signalOnParentStepExit" in found:
        given = ctx.guard(lambda: _signal(ctx, found["signalOnParentStepExit"], f"{path}.signalOnParentStepExit"))
        signal = 15 if given is None else given
    steps = steps_of(ctx, sctx, found["steps"], f"{path}.steps")
    return Launch(steps, handle, signal)


def _signal(ctx: Ctx, node: Node, path: str) -> int:
    value = integer_of(ctx, node, path, 0)
    if value > 64:
        ctx.fail(node.line, path, "a signal number from 0 (none) to 64", got=describe(node))
    return value


def _use(ctx: Ctx, sctx: StepsContext, node: Node, path: str) -> Use:
    refused = {"steps": "children steps added to a module are not supported; add the steps after the use step"}
    found = fields_of(ctx, node, path, ("source", "args", "exportEnvAs"), ("source",), refused)
    source_node = found["source"]
    source = _nonblank(ctx, source_node, f"{path}.source", "a module source")
    args = ctx.guard(lambda: env_of(ctx, found["args"], f"{path}.args", "arguments")) if "args" in found else {}
    export = None
    if "exportEnvAs" in found:
        export = ctx.guard(
            lambda: _matching(ctx, found["exportEnvAs"], f"{path}.exportEnvAs", ENV_NAME_RE, "a variable name prefix")
        )
    module = sctx.modules.get(source)
    if module is None and source in sctx.broken:
        return Use(source, args or {}, export)  # the module's errors say what is wrong
    if module is None:
        ctx.fail(
            source_node.line,
            f"{path}.source",
            "a module vendored under modules or a local module path (refused: no module is fetched from the "
            "network at run time)",
            got=quote(source),
        )
    inputs = {i.key for i in module.inputs}
    for key in args or {}:
        if key not in inputs:
            ctx.note(
                source_node.line,
                f"{path}.args",
                f"an input of the module ({', '.join(sorted(inputs)) or 'none'})",
                got=quote(key),
            )
    missing = [i.key for i in module.inputs if i.default is None and i.key not in (args or {})]
    if missing:
        ctx.note(
            node.line,
            f"{path}.args",
            f"a value for every input without a default ({', '.join(missing)})",
            got="nothing",
        )
    m = module.min_resources
    if (m.tasks, m.cpus_per_task, m.mem_per_cpu, m.gpus) > (0, 0, 0, 0):
        lim = sctx.limits
        short = [
            k
            for k, need, has in (
                ("tasks", m.tasks, lim.tasks),
                ("cpusPerTask", m.cpus_per_task, lim.cpus_per_task),
                ("memPerCpu", m.mem_per_cpu, lim.mem_per_cpu),
                ("gpus", m.gpus, lim.gpus),
            )
            if need > has
        ]
        if short:
            ctx.note(
                source_node.line, f"{path}.source", f"a job with the module's minimum resources ({', '.join(short)})"
            )
    return Use(source, args or {}, export)
