"""Rendering a workflow into the bash script that an executor runs.

One script serves both executors. Inside a Slurm allocation (``SLURM_JOB_ID``
set and ``srun`` found) each ``run`` becomes an ``srun`` step with
``--ntasks``, ``--cpus-per-task``, ``--mem-per-cpu``, ``--gpus`` and
``--mpi=``; elsewhere (the local executor) a step's tasks are processes on this
machine with ``SLURM_PROCID``/``SLURM_NTASKS`` set as ``srun`` would. Control
flow is plain bash: every step list runs in its own subshell (its scope);
``for`` iterations run as background subshells and are waited for;
``launch`` groups are background subshells whose PIDs ``dependsOn`` waits
for, signalled when their scope ends; ``catch``/``finally`` wrap their step;
``if`` is a bash test. Containers and storage call the provider's tools,
``"$DSQ_PYTHON" -m dsq_chain.executors.containers`` and ``... .storage``.

Exit status: the first failing step's, unless a ``catch`` handled it; a
failing ``finally`` gives its own status. Semantics are documented in
``docs/workflow.md``.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from dsq_chain.workloads.document import WorkflowError
from dsq_chain.workloads.steps import Container, Step, kind_of
from dsq_chain.workloads.workflow import Module, Transport, Workflow, from_canonical

__all__ = ["STORAGE_VARIABLES", "execution_order", "render_script"]

#: The DeepSquare variables a job sees, each with where it points below ``$STORAGE_PATH`` by default.
STORAGE_VARIABLES = {
    "DEEPSQUARE_INPUT": "input",
    "DEEPSQUARE_OUTPUT": "output",
    "DEEPSQUARE_ENV": "env",
    "DEEPSQUARE_TMP": "tmp",
    "DEEPSQUARE_SHARED_TMP": "tmp",
    "DEEPSQUARE_SHARED_WORLD_TMP": "world-tmp",
    "DEEPSQUARE_DISK_TMP": "disk/tmp",
    "DEEPSQUARE_DISK_WORLD_TMP": "disk/world-tmp",
}
#: Seconds between two uploads of the output folder with ``continuousOutputSync``.
SYNC_INTERVAL_S = 5

_HELPERS = r"""
_dsq_load_env() { # the KEY=value lines steps wrote to $DEEPSQUARE_ENV become variables
  local _l
  [ -f "$DEEPSQUARE_ENV" ] || return 0
  while IFS= read -r _l || [ -n "$_l" ]; do
    case "$_l" in DSQ_*) ;; [A-Za-z_]*=*) export "$_l" 2>/dev/null ;; esac
  done <"$DEEPSQUARE_ENV"
}
_dsq_if() { ( _dsq_load_env; eval "[[ $1 ]]" ); }
_dsq_kill_tree() { # signal a background group and everything it started: each process is stopped before
  # its children are listed and signalled, so none starts another or runs on when a child dies; the signal
  # then reaches it while stopped and takes effect as it resumes
  local _c
  kill -s STOP "$2" 2>/dev/null || return 0
  if command -v pgrep >/dev/null 2>&1; then
    for _c in $(pgrep -P "$2" 2>/dev/null); do _dsq_kill_tree "$1" "$_c"; done
  fi
  kill -s "$1" "$2" 2>/dev/null
  kill -s CONT "$2" 2>/dev/null
}
_dsq_end_scope() { # signal the launched groups still running when their step list ends
  local _e
  for _e in "${_dsq_launched[@]}"; do
    [ "${_e##*:}" = 0 ] || _dsq_kill_tree "${_e##*:}" "${_e%%:*}"
  done
  return 0
}
_dsq_wait_all() { # wait for every PID given; return the first failure's status
  local _p _r _rc=0
  for _p in "$@"; do
    wait "$_p"; _r=$?
    if [ "$_r" -ne 0 ] && [ "$_rc" -eq 0 ]; then _rc=$_r; fi
  done
  return "$_rc"
}
_dsq_run() { # _dsq_run TASKS CPUS_PER_TASK MEM_PER_CPU GPUS MPI NO_CPU_BIND -- COMMAND...
  local _tasks=$1 _cpt=$2 _mpc=$3 _gpus=$4 _mpi=$5 _nobind=$6 _i _pids=()
  shift 7
  if [ -n "${SLURM_JOB_ID:-}" ] && command -v srun >/dev/null 2>&1; then
    local _a=(--ntasks="$_tasks" --cpus-per-task="$_cpt" --mem-per-cpu="${_mpc}M" --export=ALL)
    [ "$_gpus" -gt 0 ] && _a+=(--gpus="$_gpus")
    [ "$_mpi" = - ] || _a+=(--mpi="$_mpi")
    [ "$_nobind" = 1 ] && _a+=(--cpu-bind=none)
    srun "${_a[@]}" "$@"
    return
  fi
  if [ "$_tasks" -eq 1 ]; then
    SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 "$@"
    return
  fi
  if [ "$_mpi" != - ] && [ "$_mpi" != none ] && command -v mpirun >/dev/null 2>&1; then
    mpirun --allow-run-as-root --oversubscribe -np "$_tasks" bash -c \
      'export SLURM_PROCID=${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}} SLURM_NTASKS=$0
       SLURM_LOCALID=$SLURM_PROCID exec "$@"' "$_tasks" "$@"
    return
  fi
  for ((_i = 0; _i < _tasks; _i++)); do
    SLURM_PROCID=$_i SLURM_LOCALID=$_i SLURM_NTASKS=$_tasks "$@" &
    _pids+=($!)
  done
  _dsq_wait_all "${_pids[@]}"
}
""".strip("\n")


def execution_order(steps: Sequence[Step]) -> list[Step]:
    """Steps in order; a step naming sibling steps in ``dependsOn`` runs after them (earliest declared first)."""
    names = {s.name for s in steps if s.name is not None}
    pending = list(steps)
    done: set[str] = set()
    ordered: list[Step] = []
    while pending:
        ready = next((s for s in pending if all(d in done for d in s.depends_on if d in names)), None)
        if ready is None:
            raise ValueError(f"dependency cycle among steps {[s.name for s in pending]}")
        pending.remove(ready)
        if ready.name is not None:
            done.add(ready.name)
        ordered.append(ready)
    return ordered


def render_script(wf: Workflow, job_id: int) -> str:
    """A bash batch script that runs the workflow for job ``job_id`` (on the local executor or in Slurm).

    Raises :class:`WorkflowError` if ``wf`` is not a valid workflow and
    :class:`ValueError` for a negative job id.
    """
    if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id < 0:
        raise ValueError(f"job id must be a non-negative integer, got {job_id!r}")
    wf = _revalidated(wf)
    r = _Renderer(wf)
    cpus = wf.tasks * wf.cpus_per_task
    lines = [
        "#!/bin/bash",
        f"# dsq-chain job {job_id}, workflow 0x{wf.hash().hex()} (generated: do not edit)",
        "# Runs the steps in order and stops at the first failing step with its exit code.",
        f"export DSQ_JOB_ID={job_id}",
        ': "${DSQ_PYTHON:=python3}"',
        "export DSQ_PYTHON",
        "# The storage a DeepSquare job expects (the executor sets it; below $PWD when run by hand).",
        ': "${STORAGE_PATH:=$PWD/deepsquare}"',
        "export STORAGE_PATH",
    ]
    for var, sub in STORAGE_VARIABLES.items():
        lines.append(f': "${{{var}:=$STORAGE_PATH/{sub}}}"')
    lines += [
        f"export {' '.join(STORAGE_VARIABLES)}",
        'mkdir -p "$STORAGE_PATH" "$DEEPSQUARE_INPUT" "$DEEPSQUARE_OUTPUT" "$DEEPSQUARE_TMP" "$DEEPSQUARE_SHARED_TMP" '
        '"$DEEPSQUARE_SHARED_WORLD_TMP" "$DEEPSQUARE_DISK_TMP" "$DEEPSQUARE_DISK_WORLD_TMP" || exit 1',
        'touch "$DEEPSQUARE_ENV" || exit 1',
        f"export NTASKS={wf.tasks} CPUS_PER_TASK={wf.cpus_per_task} MEM_PER_CPU={wf.mem_per_cpu} GPUS={wf.gpus} "
        f"CPUS={cpus} MEM={cpus * wf.mem_per_cpu}",
        *_exports(wf.env),
        _HELPERS,
    ]
    if wf.input is not None:
        lines += ["# input: fetched before the first step", *r.storage("fetch", wf.input, '"$DEEPSQUARE_INPUT"')]
        lines.append(
            '_dsq_rc=$?; [ $_dsq_rc -eq 0 ] || { echo "dsq: input fetch failed ($_dsq_rc)" >&2; exit $_dsq_rc; }'
        )
    if wf.input_mode is not None:
        lines.append(f'chmod -R {wf.input_mode:o} "$DEEPSQUARE_INPUT"')
    syncing = wf.output is not None and wf.continuous_output_sync and wf.output.is_s3
    if wf.continuous_output_sync and not syncing:
        lines.append(
            'echo "dsq: continuousOutputSync needs S3 output; the http output is uploaded once, at the end" >&2'
        )
    if syncing and wf.output is not None:
        lines += ["# continuousOutputSync: the output folder is uploaded every few seconds while the steps run"]
        lines += [*r.storage("sync", wf.output, '"$DEEPSQUARE_OUTPUT"', background=True), "_dsq_sync=$!"]
    lines += ["# steps", *r.scope(wf.steps, ""), "_dsq_rc=$?"]
    if syncing:
        lines.append('kill "$_dsq_sync" 2>/dev/null; wait "$_dsq_sync" 2>/dev/null')
    if wf.output is not None:
        lines += [
            "# output: uploaded after the last step (also after a failing one)",
            *r.storage("push", wf.output, '"$DEEPSQUARE_OUTPUT"'),
            "_dsq_out=$?; [ $_dsq_rc -ne 0 ] || _dsq_rc=$_dsq_out",
        ]
    lines.append("exit $_dsq_rc")
    return "\n".join(lines) + "\n"


def _revalidated(wf: Workflow) -> Workflow:
    """``wf`` as the validator sees it: guards against hand-built workflows with unsafe names."""
    try:
        canonical = wf.canonical()
    except UnicodeEncodeError:
        raise WorkflowError("text without lone surrogates", source="<workflow>") from None
    return from_canonical(canonical)


def _exports(env: Mapping[str, str], indent: str = "") -> list[str]:
    return [f"{indent}export {name}={shlex.quote(value)}" for name, value in sorted(env.items())]


def _q(text: str) -> str:
    return shlex.quote(text)


@dataclass
class _Renderer:
    wf: Workflow
    counter: list[int] = field(default_factory=lambda: [0])

    def _next(self) -> int:
        self.counter[0] += 1
        return self.counter[0]

    def storage(self, verb: str, where: Transport, folder: str, *, background: bool = False) -> list[str]:
        """A call of the storage tool in a subshell that alone holds the S3 credentials."""
        env: dict[str, str] = {}
        if where.is_s3:
            pairs = (
                ("AWS_ACCESS_KEY_ID", where.access_key_id),
                ("AWS_SECRET_ACCESS_KEY", where.secret_access_key),
                ("AWS_DEFAULT_REGION", where.region),
                ("AWS_ENDPOINT_URL", where.endpoint),
            )
            env = {k: v for k, v in pairs if v}
        tool = '"$DSQ_PYTHON" -m dsq_chain.executors.storage'
        delete = " --delete" if where.delete_sync else ""
        if verb == "fetch":
            call = f"{tool} fetch {_q(where.url)} {folder}"
        elif verb == "push":
            call = f"{tool} push {folder} {_q(where.url)}{delete}"
        else:
            call = f"{tool} sync {folder} {_q(where.url)} --interval {SYNC_INTERVAL_S}{delete}"
        exports = " ".join(f"{k}={_q(v)}" for k, v in sorted(env.items()))
        body = f"( {'export ' + exports + '; ' if exports else ''}exec {call} </dev/null )"
        return [body + (" &" if background else "")]

    def scope(self, steps: Sequence[Step], ind: str) -> list[str]:
        """A step list in its own subshell: its launched groups are signalled when it ends."""
        lines = [f"{ind}(", f"{ind}  _dsq_launched=()"]
        for step in execution_order(steps):
            lines += self.step(step, ind + "  ")
        lines += [f"{ind}  _dsq_end_scope", f"{ind})"]
        return lines

    def step(self, step: Step, ind: str) -> list[str]:
        label = step.name if step.name is not None else f"({kind_of(step)})"
        lines = [f"{ind}# step: {label!r}"]
        for dep in step.depends_on:  # a launch handle: wait for its group; a sibling's name: the order did it
            if dep.replace("_", "").isalnum() and dep.isascii():
                lines.append(f'{ind}if [ -n "${{_dsq_pid_{dep}:-}}" ]; then wait "$_dsq_pid_{dep}" || exit $?; fi')
        body = self.action(step, ind + ("  " if step.condition is not None else ""))
        if step.catch is not None or step.finally_ is not None:
            body = self.catch_finally(step, body, ind + ("  " if step.condition is not None else ""))
        if step.condition is not None:
            lines += [f"{ind}if _dsq_if {_q(step.condition)}; then", *body, f"{ind}fi"]
        else:
            lines += body
        return lines

    def catch_finally(self, step: Step, body: list[str], ind: str) -> list[str]:
        lines = [f"{ind}(", f"{ind}  (", f"{ind}    _dsq_launched=()"]
        lines += [f"  {line}" for line in body]
        lines += [f"{ind}    _dsq_end_scope", f"{ind}  )", f"{ind}  _dsq_rc=$?"]
        lines.append(f"{ind}  [ $_dsq_rc -eq 0 ] || export DEEPSQUARE_ERROR_CODE=$_dsq_rc")
        if step.catch is not None:
            lines += [
                f"{ind}  if [ $_dsq_rc -ne 0 ]; then",
                *self.scope(step.catch, ind + "    "),
                f"{ind}    _dsq_rc=$?",
                f"{ind}  fi",
            ]
        if step.finally_ is not None:
            lines += [
                *self.scope(step.finally_, ind + "  "),
                f"{ind}  _dsq_f=$?",
                f"{ind}  [ $_dsq_f -eq 0 ] || exit $_dsq_f",
            ]
        lines += [f"{ind}  exit $_dsq_rc", f"{ind}) || exit $?"]
        return lines

    def action(self, step: Step, ind: str) -> list[str]:
        kind = kind_of(step)
        if kind == "run":
            return self.run(step, ind)
        if kind == "steps" and step.steps is not None:
            return [*self.scope(step.steps, ind)[:-1], f"{ind}) || exit $?"]
        if kind == "for" and step.loop is not None:
            return self.loop(step, ind)
        if kind == "launch" and step.launch is not None:
            launch = step.launch
            lines = [*self.scope(launch.steps, ind)[:-1], f"{ind}) &"]
            if launch.handle is not None:
                lines.append(f"{ind}_dsq_pid_{launch.handle}=$!")
            lines.append(f'{ind}_dsq_launched+=("$!:{launch.signal}")')
            return lines
        if kind == "use" and step.use is not None:
            return self.use(step, ind)
        return [f"{ind}:"]

    def loop(self, step: Step, ind: str) -> list[str]:
        assert step.loop is not None
        loop = step.loop
        values = " ".join(_q(v) for v in loop.values())
        n = self._next()
        inner = self.scope(loop.steps, ind + "  ")
        inner[0] = f'{ind}  ( export {loop.variable}="$_dsq_v"'
        if loop.parallel:
            return [
                f"{ind}_dsq_pids_{n}=()",
                f"{ind}for _dsq_v in {values}; do",
                *inner[:-1],
                f"{ind}  ) &",
                f"{ind}  _dsq_pids_{n}+=($!)",
                f"{ind}done",
                f'{ind}_dsq_wait_all "${{_dsq_pids_{n}[@]}}" || exit $?',
            ]
        return [f"{ind}for _dsq_v in {values}; do", *inner[:-1], f"{ind}  ) || exit $?", f"{ind}done"]

    def use(self, step: Step, ind: str) -> list[str]:
        assert step.use is not None
        use = step.use
        module: Module = self.wf.modules[use.source]
        lines = [f"{ind}("]
        for item in module.inputs:
            value = use.args.get(item.key, item.default)
            if value is not None:
                lines.append(f"{ind}  export {item.key}={_q(value)}")
        prefix = use.export_env_as
        if prefix is not None:
            n = self._next()
            lines += [
                f'{ind}  _dsq_parent_env="$DEEPSQUARE_ENV"',
                f'{ind}  export DEEPSQUARE_ENV="$STORAGE_PATH/env.module-{n}"',
                f'{ind}  : >"$DEEPSQUARE_ENV"',
            ]
        lines += [*self.scope(module.steps, ind + "  "), f"{ind}  _dsq_rc=$?"]
        if prefix is not None:
            for key, _ in module.outputs:
                lines.append(
                    f'{ind}  grep -E {_q("^" + key + "=")} "$DEEPSQUARE_ENV" | sed {_q("s/^/" + prefix + "_/")} '
                    '>>"$_dsq_parent_env"'
                )
        lines += [f"{ind}  exit $_dsq_rc", f"{ind}) || exit $?"]
        return lines

    def run(self, step: Step, ind: str) -> list[str]:
        assert step.command is not None
        wf = self.wf
        res = step.resources
        tasks = res.tasks if res and res.tasks else 1
        cpt = res.cpus_per_task if res and res.cpus_per_task else wf.cpus_per_task
        mpc = res.mem_per_cpu if res and res.mem_per_cpu else wf.mem_per_cpu
        gpus = res.gpus if res and res.gpus is not None else 0
        flags = f"{tasks} {cpt} {mpc} {gpus} {step.mpi or '-'} {1 if step.disable_cpu_binding else 0} --"
        inner = ind + "  "
        lines = [f"{ind}(", f"{inner}export DSQ_STEP={_q(step.name or '')}", f"{inner}_dsq_load_env"]
        lines += _exports(step.env, inner)
        command = [step.shell, "-c", step.command]
        if step.container is not None:
            lines += self.container(step, step.container, inner)
            call = (
                f'{inner}_dsq_run {flags} "$DSQ_PYTHON" -m dsq_chain.executors.containers run '
                f'"${{_dsq_cargs[@]}}" -- {" ".join(_q(c) for c in command)} </dev/null'
            )
            return [*lines, call, f"{ind}) || exit $?"]
        if step.workdir is not None:
            wd = _q(step.workdir)
            lines.append(
                f'{inner}mkdir -p {wd} && cd {wd} || {{ echo "dsq: cannot enter workDir {step.workdir}" >&2; exit 1; }}'
            )
        if step.map_uid is not None or step.map_gid is not None:
            ids = [f"--map-user={step.map_uid if step.map_uid is not None else 0}"]
            if step.map_gid is not None:
                ids.append(f"--map-group={step.map_gid}")
            command = ["unshare", "--user", *ids, "--", *command]
        return [*lines, f"{inner}_dsq_run {flags} {' '.join(_q(c) for c in command)} </dev/null", f"{ind}) || exit $?"]

    def container(self, step: Step, c: Container, ind: str) -> list[str]:
        """Set ``_dsq_cargs``: image, registry, mounts, workdir, ids (the tool binds the job's storage itself)."""
        lines = []
        if c.username is not None:
            lines.append(f"{ind}export DSQ_REGISTRY_USERNAME={_q(c.username)}")
        if c.password is not None:
            lines.append(f"{ind}export DSQ_REGISTRY_PASSWORD={_q(c.password)}")
        args = [f"--image {_q(c.image)}"]
        if c.registry is not None:
            args.append(f"--registry {_q(c.registry)}")
        for mount in c.mounts:
            target = _q(f"{mount.container_dir}{':ro' if mount.read_only else ''}")
            args.append(f'--mount "{mount.host_dir}":{target}')
        if step.workdir is not None:
            args.append(f"--workdir {_q(step.workdir)}")
        if step.map_uid is not None:
            args.append(f"--map-uid {step.map_uid}")
        if step.map_gid is not None:
            args.append(f"--map-gid {step.map_gid}")
        if c.read_only:
            args.append("--read-only")
        if c.mount_home:
            args.append('--mount "$HOME:$HOME"')
        return [*lines, f"{ind}_dsq_cargs=({' '.join(args)})"]
