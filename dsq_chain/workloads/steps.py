"""The steps of a workflow, as DeepSquare writes them: run, groups, for, launch, use, catch, finally, if.

A step does at most one thing (``run`` a command, run a group of ``steps``, a
``for`` loop, ``launch`` a background group, ``use`` a module) and may carry
``if``, ``dependsOn``, ``catch`` and ``finally`` around it; a step that does
nothing is allowed. Checking a document into these objects is
:mod:`dsq_chain.workloads.step_checks`; rendering them into bash is
:mod:`dsq_chain.workloads.script`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

#: Shell that runs a step's command unless the step names another one.
DEFAULT_SHELL = "/bin/sh"
#: MPI plugins a step may ask Slurm for (``srun --mpi=``), as DeepSquare names them.
MPI_TYPES = ("none", "pmix_v4", "pmi2")
#: Most iterations one ``for`` loop may have (each one is a process).
MAX_ITERATIONS = 1024

# --------------------------------------------------------------------------- the model


@dataclass(frozen=True)
class StepResources:
    """What one ``run`` asks of the job's allocation (None: DeepSquare's default; 1 task, the job's others)."""

    tasks: int | None = None
    cpus_per_task: int | None = None
    mem_per_cpu: int | None = None
    gpus: int | None = None

    def to_data(self) -> dict[str, int]:
        pairs = (("tasks", self.tasks), ("cpusPerTask", self.cpus_per_task), ("memPerCpu", self.mem_per_cpu))
        data = {key: value for key, value in pairs if value is not None}
        if self.gpus is not None:
            data["gpus"] = self.gpus
        return data


@dataclass(frozen=True)
class Mount:
    """A bind mount into a container: ``host_dir`` is ``$STORAGE_PATH...`` or a ``$DEEPSQUARE_*`` folder."""

    host_dir: str
    container_dir: str
    read_only: bool = False

    def to_data(self) -> dict[str, str]:
        return {
            "hostDir": self.host_dir,
            "containerDir": self.container_dir,
            "options": "ro" if self.read_only else "rw",
        }


@dataclass(frozen=True)
class Container:
    """Run the command inside an OCI image (pulled from ``registry``, default the provider's)."""

    image: str
    registry: str | None = None
    username: str | None = None
    password: str | None = None
    mounts: tuple[Mount, ...] = ()
    apptainer: bool = False
    read_only: bool = False
    mount_home: bool = False

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"image": self.image}
        for key, value in (("registry", self.registry), ("username", self.username), ("password", self.password)):
            if value is not None:
                data[key] = value
        if self.mounts:
            data["mounts"] = [m.to_data() for m in self.mounts]
        if self.apptainer:
            data["apptainer"] = True
        if self.read_only:
            data["readOnlyRootFS"] = True
        if self.mount_home:
            data["mountHome"] = True
        return data


@dataclass(frozen=True)
class ForLoop:
    """Run ``steps`` once per item (``$item``) or per number of a range (``$index``), in parallel or in turn."""

    parallel: bool
    steps: tuple[Step, ...]
    items: tuple[str, ...] | None = None
    begin: int = 0
    end: int = 0
    increment: int = 1

    @property
    def variable(self) -> str:
        """The variable each iteration sees: ``item`` or ``index``."""
        return "item" if self.items is not None else "index"

    def values(self) -> list[str]:
        """The iteration values, in order."""
        if self.items is not None:
            return list(self.items)
        return [str(v) for v in range_values(self.begin, self.end, self.increment)]

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"parallel": self.parallel, "steps": [s.to_data() for s in self.steps]}
        if self.items is not None:
            data["items"] = list(self.items)
        else:
            data["range"] = {"begin": self.begin, "end": self.end, "increment": self.increment}
        return data


@dataclass(frozen=True)
class Launch:
    """Run ``steps`` in the background; ``dependsOn: [handle]`` waits for them; the rest is signalled at scope end."""

    steps: tuple[Step, ...]
    handle: str | None = None
    signal: int = 15
    """Signal sent to the group still running when its enclosing step list ends (0: none)."""

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"steps": [s.to_data() for s in self.steps], "signalOnParentStepExit": self.signal}
        if self.handle is not None:
            data["handleName"] = self.handle
        return data


@dataclass(frozen=True)
class Use:
    """Run a module's steps with ``args`` as its inputs; ``exportEnvAs`` prefixes the outputs it exports."""

    source: str
    args: dict[str, str] = field(default_factory=dict)
    export_env_as: str | None = None

    def to_data(self) -> dict[str, Any]:
        data: dict[str, Any] = {"source": self.source, "args": [{"key": k, "value": v} for k, v in self.args.items()]}
        if self.export_env_as is not None:
            data["exportEnvAs"] = self.export_env_as
        return data


@dataclass(frozen=True)
class Step:
    """One step. ``command`` is None unless the step runs a command (then ``shell``, ``env``... apply).

    ``depends_on`` names launch handles to wait for, or sibling steps to run after.
    """

    name: str | None
    command: str | None = None
    shell: str = DEFAULT_SHELL
    env: dict[str, str] = field(default_factory=dict)
    depends_on: tuple[str, ...] = ()
    workdir: str | None = None
    map_uid: int | None = None
    map_gid: int | None = None
    mpi: str | None = None
    resources: StepResources | None = None
    container: Container | None = None
    disable_cpu_binding: bool = False
    condition: str | None = None
    steps: tuple[Step, ...] | None = None
    loop: ForLoop | None = None
    launch: Launch | None = None
    use: Use | None = None
    catch: tuple[Step, ...] | None = None
    finally_: tuple[Step, ...] | None = None

    def __hash__(self) -> int:
        return hash(json.dumps(self.to_data(), sort_keys=True))

    def to_data(self) -> dict[str, Any]:
        """The step in the document format (the run's command, shell, env and dependsOn always explicit)."""
        data: dict[str, Any] = {}
        if self.name is not None:
            data["name"] = self.name
        if self.command is not None:
            data["run"] = self._run_data()
        data["dependsOn"] = list(self.depends_on)
        if self.condition is not None:
            data["if"] = self.condition
        if self.steps is not None:
            data["steps"] = [s.to_data() for s in self.steps]
        if self.loop is not None:
            data["for"] = self.loop.to_data()
        if self.launch is not None:
            data["launch"] = self.launch.to_data()
        if self.use is not None:
            data["use"] = self.use.to_data()
        if self.catch is not None:
            data["catch"] = [s.to_data() for s in self.catch]
        if self.finally_ is not None:
            data["finally"] = [s.to_data() for s in self.finally_]
        return data

    def _run_data(self) -> dict[str, Any]:
        run: dict[str, Any] = {"command": self.command, "shell": self.shell, "env": dict(self.env)}
        optional = (("workDir", self.workdir), ("mapUid", self.map_uid), ("mapGid", self.map_gid), ("mpi", self.mpi))
        run.update({key: value for key, value in optional if value is not None})
        if self.resources is not None:
            run["resources"] = self.resources.to_data()
        if self.container is not None:
            run["container"] = self.container.to_data()
        if self.disable_cpu_binding:
            run["disableCpuBinding"] = True
        return run

    def children(self) -> list[tuple[str, tuple[Step, ...]]]:
        """The step lists nested in this step, with their field names."""
        found: list[tuple[str, tuple[Step, ...]]] = []
        for key, steps in (
            ("steps", self.steps),
            ("for.steps", self.loop.steps if self.loop else None),
            ("launch.steps", self.launch.steps if self.launch else None),
            ("catch", self.catch),
            ("finally", self.finally_),
        ):
            if steps is not None:
                found.append((key, steps))
        return found


def walk(steps: Sequence[Step]) -> list[Step]:
    """Every step of a tree, depth first."""
    found: list[Step] = []
    for step in steps:
        found.append(step)
        for _, nested in step.children():
            found += walk(nested)
    return found


def range_values(begin: int, end: int, increment: int) -> range:
    return range(begin, end + (1 if increment > 0 else -1), increment)


Kind = Literal["run", "steps", "for", "launch", "use", "none"]


def kind_of(step: Step) -> Kind:
    """What a step does."""
    if step.command is not None:
        return "run"
    for kind, value in (("steps", step.steps), ("for", step.loop), ("launch", step.launch), ("use", step.use)):
        if value is not None:
            return kind  # type: ignore[return-value]
    return "none"
