"""DeepSquare's job format: the public corpus, refusals, every error at once, and control flow run for real.

The corpus (``tests/data/deepsquare``, see its SOURCES) holds real public
DeepSquare workflows. Control-flow workflows run through bash as the local
executor runs them, through the real local executor, and through real Slurm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dsq_chain.executors import ExecState, LocalExecutor, SlurmExecutor
from dsq_chain.executors.base import ExecSpec
from dsq_chain.workloads.script import render_script
from dsq_chain.workloads.workflow import Workflow, WorkflowError, json_schema, load, loads
from tests.executor_contract import wait_final
from tests.slurm_cluster import SlurmCluster, slurm_cluster  # noqa: F401  (the fixture)
from tests.storage_fixtures import HttpServer, S3Server, http_server, s3_server  # noqa: F401  (fixtures)

DATA = Path(__file__).parent / "data" / "deepsquare"
SCHEMA = jsonschema.Draft202012Validator(json_schema())


def _closed(schema: Any) -> Any:
    """DeepSquare's schema with closed objects, as their GraphQL input types are (an unknown field is an error)."""
    if isinstance(schema, dict):
        closed = {k: _closed(v) for k, v in schema.items()}
        if "properties" in closed:
            closed["additionalProperties"] = False
        return closed
    return [_closed(v) for v in schema] if isinstance(schema, list) else schema


THEIR_SCHEMA = jsonschema.Draft6Validator(_closed(json.loads((DATA / "job.schema.json").read_text())))
BASH = shutil.which("bash")


def corpus() -> list[Path]:
    """The workflow files listed in SOURCES."""
    names = [line.split("\t")[0] for line in (DATA / "SOURCES").read_text().splitlines() if line and line[0] != "#"]
    return [DATA / name for name in names if name != "job.schema.json"]


def job_text(path: Path) -> str | None:
    """A corpus file's job as text: the file itself, or its ``job:`` (sbatch-service fixtures wrap jobs so)."""
    text = path.read_text()
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # a documentation snippet with placeholders
    if isinstance(doc, dict) and "job" in doc and "steps" not in doc:
        return json.dumps(doc["job"])
    return text


def _is_refusal_or_cross_check(err: WorkflowError) -> bool:
    return "refused" in err.expected or "module vendored" in err.expected


def test_corpus_is_listed_with_its_sources() -> None:
    files = corpus()
    assert len(files) >= 80
    for line in (DATA / "SOURCES").read_text().splitlines():
        if line and line[0] != "#":
            name, repo, _path, commit, license_ = line.split("\t")
            assert (DATA / name).is_file() and repo.startswith("deepsquare-io/") and len(commit) == 40 and license_


@pytest.mark.parametrize("path", corpus(), ids=lambda p: p.relative_to(DATA).as_posix())
def test_corpus_example(path: Path) -> None:
    """What DeepSquare's schema accepts loads here, or is refused with a named reason; our schema agrees."""
    text = job_text(path)
    if text is None:
        pytest.skip("not YAML (a documentation snippet with placeholders)")
    doc = yaml.safe_load(text)
    try:
        wf = loads(text, source=path.name)
    except WorkflowError as err:
        if THEIR_SCHEMA.is_valid(doc) and "tasks" in str(doc.get("resources", {})):
            bad = [e for e in err.errors if not _is_refusal_or_cross_check(e)]
            assert not bad, "\n".join(map(str, bad))
        if all("module vendored" in e.expected for e in err.errors):
            assert SCHEMA.is_valid(doc)  # only a rule the schema cannot state
        else:
            assert not SCHEMA.is_valid(doc), f"our schema accepts what the loader refuses: {err}"
        return
    assert SCHEMA.is_valid(doc), "the loader accepts what our schema refuses"
    assert loads(wf.canonical()).canonical() == wf.canonical()
    assert render_script(wf, 1).startswith("#!/bin/bash\n")


def test_enough_of_the_corpus_loads_as_is() -> None:
    loaded = 0
    for path in corpus():
        text = job_text(path)
        try:
            loads(text or "", source=path.name)
            loaded += 1
        except WorkflowError:
            pass
    assert loaded >= 20


# --------------------------------------------------------------------------- format


DS_JOB = """\
enableLogging: true
resources: {tasks: 2, cpusPerTask: 1, memPerCpu: 128, gpus: 0}
env:
  - key: GREETING
    value: hello
  - key: COUNT
    value: 3
steps:
  - name: say hello world
    run:
      command: echo "$GREETING $COUNT"
      env:
        - {key: EXTRA, value: x}
      resources: {tasks: 1}
"""


def test_deepsquare_job_as_written() -> None:
    wf = loads(DS_JOB)
    assert wf.enable_logging and wf.env == {"GREETING": "hello", "COUNT": "3"}
    assert wf.steps[0].name == "say hello world" and wf.steps[0].env == {"EXTRA": "x"}
    assert loads(wf.canonical()) == wf


def test_every_error_of_a_file_at_once() -> None:
    text = """\
resources: {tasks: 0, cpusPerTask: 1, memPerCpu: 1}
virtualNetworks: [{name: net, gatewayAddress: 10.0.0.1/24}]
steps:
  - name: a
    run:
      command: ""
      mpi: openmpi
      container: {image: ubuntu, x11: true}
      dns: [8.8.8.8]
  - name: b
    dependsOn: [nowhere]
"""
    with pytest.raises(WorkflowError) as info:
        loads(text, source="job.yaml")
    err = info.value
    fields = [e.field for e in err.errors]
    assert fields == [
        "resources.tasks",
        "virtualNetworks",
        "steps[0].run.command",
        "steps[0].run.mpi",
        "steps[0].run.container.x11",
        "steps[0].run.dns",
        "steps[1].dependsOn[0]",
    ], str(err)
    assert [e.line for e in err.errors] == [1, 2, 6, 7, 8, 9, 11]
    assert str(err).splitlines()[1].startswith("job.yaml:2: virtualNetworks: expected no virtualNetworks: refused, ")
    assert "X11 needs a display server" in str(err)


@pytest.mark.parametrize(
    ("run", "field", "reason"),
    [
        ({"command": "true", "network": "slirp4netns"}, "network", "slirp4netns and pasta"),
        (
            {"command": "true", "customNetworkInterfaces": [{"wireguard": {"privateKey": "k"}}]},
            "customNetworkInterfaces",
            "WireGuard, bore",
        ),
        (
            {"command": "true", "container": {"image": "x", "deepsquareHosted": True}},
            "deepsquareHosted",
            "DeepSquare-hosted",
        ),
        ({"command": "true", "container": {"image": "x", "x11": True}}, "x11", "X11"),
        ({"command": "true", "shell": "ENTRYPOINT"}, "shell", "ENTRYPOINT"),
        (
            {"command": "true", "container": {"image": "x", "mounts": [{"hostDir": "/etc", "containerDir": "/e"}]}},
            "hostDir",
            "no other host directory",
        ),
        ({"command": "true", "resources": {"tasks": 3}}, "resources", "a step cannot ask for more than the job"),
        ({"command": "true", "resources": {"gpus": 1}}, "resources", "a step cannot ask for more than the job"),
    ],
)
def test_what_cannot_be_honoured_is_refused_with_a_reason(run: dict[str, Any], field: str, reason: str) -> None:
    doc = {"resources": {"tasks": 2, "cpusPerTask": 1, "memPerCpu": 1}, "steps": [{"run": run}]}
    with pytest.raises(WorkflowError) as info:
        loads(json.dumps(doc))
    assert any(e.field.endswith(field) and reason in e.expected for e in info.value.errors), str(info.value)
    assert not SCHEMA.is_valid(doc) or field == "resources"  # the job's limits are a cross-check


def test_retired_gpus_per_task_warns_with_the_hint() -> None:
    wf = loads(
        "resources: {tasks: 2, cpusPerTask: 1, memPerCpu: 1, gpusPerTask: 1}\nsteps: [{run: {command: 'true'}}]\n"
    )
    assert wf.gpus == 2
    assert wf.warnings == (
        "<input>:1: resources.gpusPerTask: gpusPerTask is retired: write gpus: 2 "
        "(GPUs for the whole job = tasks x gpusPerTask)",
    )
    assert loads(wf.canonical()).warnings == ()  # the canonical form says gpus


def test_remote_modules_are_refused_local_ones_vendored(tmp_path: Path) -> None:
    remote = "resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}\nsteps: [{use: {source: github.com/x/y}}]\n"
    with pytest.raises(WorkflowError, match="no module is fetched from the network at run time"):
        loads(remote)
    (tmp_path / "hello").mkdir()
    (tmp_path / "hello" / "module.yaml").write_text(MODULE)
    (tmp_path / "job.yaml").write_text(
        "resources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}\n"
        "steps: [{use: {source: ./hello, args: [{key: WHO, value: me}], exportEnvAs: HELLO}}]\n"
    )
    wf = load(tmp_path / "job.yaml")
    assert list(wf.modules) == ["./hello"]
    assert loads(wf.canonical()) == wf  # vendored: the worker needs nothing but the canonical bytes


# --------------------------------------------------------------------------- control flow, run for real

MODULE = """\
name: hello
description: says hello to WHO and exports RESULT
minimumResources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1, gpus: 0}
inputs: [{key: WHO, description: who}, {key: HOW, description: how, default: warmly}]
outputs: [{key: RESULT, description: the greeting}]
steps:
  - name: greet
    run:
      command: echo "RESULT=hello $WHO $HOW" >> "$DEEPSQUARE_ENV"
"""

CONTROL_FLOW = {
    "resources": {"tasks": 2, "cpusPerTask": 1, "memPerCpu": 64, "gpus": 0},
    "env": [{"key": "WHERE", "value": "here"}],
    "modules": {"hello": yaml.safe_load(MODULE)},
    "steps": [
        {
            "name": "background writer",
            "launch": {
                "handleName": "writer",
                "steps": [
                    {
                        "run": {
                            "command": 'until [ -e "$STORAGE_PATH/go" ]; do sleep 0.05; done; '
                            'echo written > "$STORAGE_PATH/bg"'
                        }
                    }
                ],
            },
        },
        {"name": "release", "run": {"command": 'touch "$STORAGE_PATH/go"'}},
        # Each iteration waits until both have started: it finishes only if they run at the same time.
        {
            "name": "parallel loop",
            "for": {
                "parallel": True,
                "range": {"begin": 1, "end": 2},
                "steps": [
                    {
                        "run": {
                            "command": 'touch "$STORAGE_PATH/it.$index"; n=0; '
                            'while [ "$(ls "$STORAGE_PATH" | grep -c "^it\\.")" -lt 2 ]; '
                            "do n=$((n+1)); [ $n -lt 600 ] || exit 9; sleep 0.05; done"
                        }
                    }
                ],
            },
        },
        {
            "name": "items",
            "for": {
                "parallel": False,
                "items": ["a", "b"],
                "steps": [{"run": {"command": 'echo "item $item" >> "$DEEPSQUARE_OUTPUT/log"'}}],
            },
        },
        {
            "name": "wait for writer",
            "dependsOn": ["writer"],
            "run": {"command": 'test "$(cat "$STORAGE_PATH/bg")" = written'},
        },
        {"name": "export", "run": {"command": 'echo "FROM_STEP=one two" >> "$DEEPSQUARE_ENV"'}},
        {"name": "read", "run": {"command": 'echo "got $FROM_STEP $WHERE" >> "$DEEPSQUARE_OUTPUT/log"'}},
        {"name": "skipped", "if": '"$WHERE" == elsewhere', "run": {"command": "exit 3"}},
        {"name": "taken", "if": '"$WHERE" == here', "run": {"command": 'echo taken >> "$DEEPSQUARE_OUTPUT/log"'}},
        {
            "name": "caught",
            "run": {"command": "exit 7"},
            "catch": [{"run": {"command": 'echo "caught $DEEPSQUARE_ERROR_CODE" >> "$DEEPSQUARE_OUTPUT/log"'}}],
            "finally": [{"run": {"command": 'echo finally >> "$DEEPSQUARE_OUTPUT/log"'}}],
        },
        {"name": "module", "use": {"source": "hello", "args": [{"key": "WHO", "value": "me"}], "exportEnvAs": "HELLO"}},
        {"name": "module output", "run": {"command": 'echo "$HELLO_RESULT" >> "$DEEPSQUARE_OUTPUT/log"'}},
        {
            "name": "tasks",
            "run": {
                "command": 'echo "task $SLURM_PROCID of $SLURM_NTASKS" >> "$DEEPSQUARE_OUTPUT/tasks.$SLURM_PROCID"',
                "resources": {"tasks": 2},
                "mpi": "pmi2",
            },
        },
    ],
}
EXPECTED_LOG = ["item a", "item b", "got one two here", "taken", "caught 7", "finally", "hello me warmly"]


def _bash(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert BASH is not None
    (cwd / "job.sh").write_text(script)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run([BASH, "job.sh"], cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def _check_control_flow(storage: Path) -> None:
    assert (storage / "output" / "log").read_text().splitlines() == EXPECTED_LOG
    tasks = sorted((storage / "output").glob("tasks.*"))
    assert [t.read_text().strip() for t in tasks] == ["task 0 of 2", "task 1 of 2"]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_control_flow_runs(tmp_path: Path) -> None:
    result = _bash(render_script(loads(json.dumps(CONTROL_FLOW)), 5), tmp_path)
    assert result.returncode == 0, result.stderr
    _check_control_flow(tmp_path / "deepsquare")


def _one(step: dict[str, Any]) -> Workflow:
    return loads(json.dumps({"resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1}, "steps": [step]}))


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
@pytest.mark.parametrize(
    ("step", "code", "log"),
    [
        ({"run": {"command": "exit 4"}, "catch": [{"run": {"command": "exit 6"}}]}, 6, ""),  # catch fails: its status
        (
            {"run": {"command": "exit 4"}, "finally": [{"run": {"command": "echo f $DEEPSQUARE_ERROR_CODE >> log"}}]},
            4,
            "f 4\n",
        ),
        ({"run": {"command": "true"}, "finally": [{"run": {"command": "exit 5"}}]}, 5, ""),  # finally fails
        (
            {
                "run": {"command": "exit 4"},
                "catch": [{"run": {"command": "true"}}],
                "finally": [{"run": {"command": "exit 8"}}],
            },
            8,
            "",
        ),
        ({"for": {"parallel": True, "items": ["1", "2", "3"], "steps": [{"run": {"command": 'exit "$item"'}}]}}, 1, ""),
        (
            {
                "launch": {
                    "handleName": "h",
                    "signalOnParentStepExit": 0,
                    "steps": [{"run": {"command": "sleep 0.2; echo late >> log"}}],
                }
            },
            0,
            "late\n",
        ),
    ],
)
def test_documented_statuses(tmp_path: Path, step: dict[str, Any], code: int, log: str) -> None:
    """catch replaces the step's status with its own; a failing finally gives its status; a loop its first failure."""
    result = _bash(render_script(_one(step), 1), tmp_path)
    assert result.returncode == code, result.stderr
    if step.get("launch"):  # signal 0: the group outlives its scope; give it time to write
        subprocess.run(["sleep", "0.5"], check=True)
    assert ((tmp_path / "log").read_text() if (tmp_path / "log").exists() else "") == log


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_launched_group_is_stopped_when_its_scope_ends(tmp_path: Path) -> None:
    nap = f"sleep 5.{os.getpid():07d}"  # a command line no other process on the machine has
    wf = _one(
        {
            "steps": [
                {"launch": {"steps": [{"run": {"command": f"{nap}; echo never >> log"}}]}},
                {"run": {"command": "true"}},
            ]
        }
    )
    assert _bash(render_script(wf, 1), tmp_path).returncode == 0
    subprocess.run(["sleep", "0.3"], check=True)
    assert not (tmp_path / "log").exists()
    assert nap not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


def test_container_and_storage_steps_call_the_provider_tools() -> None:
    doc = {
        "resources": {"tasks": 2, "cpusPerTask": 1, "memPerCpu": 64},
        "input": {"http": {"url": "http://127.0.0.1:9/in.tar"}},
        "output": {
            "s3": {
                "region": "us-east-1",
                "bucketUrl": "s3://results",
                "path": "/job",
                "accessKeyId": "AK",
                "secretAccessKey": "secret-key-value",
                "endpointUrl": "http://127.0.0.1:9000",
            }
        },
        "continuousOutputSync": True,
        "steps": [
            {
                "name": "in a box",
                "run": {
                    "command": "echo hi",
                    "shell": "/bin/sh",
                    "workDir": "/work",
                    "mapUid": 0,
                    "env": [{"key": "A", "value": "1"}],
                    "resources": {"tasks": 2},
                    "mpi": "pmix_v4",
                    "container": {
                        "image": "library/busybox:1",
                        "registry": "127.0.0.1:5000",
                        "username": "u",
                        "password": "p w",
                        "mounts": [{"hostDir": "$DEEPSQUARE_TMP/m", "containerDir": "/m", "options": "ro"}],
                    },
                },
            }
        ],
    }
    script = render_script(loads(json.dumps(doc)), 3)
    assert '"$DSQ_PYTHON" -m dsq_chain.executors.storage fetch http://127.0.0.1:9/in.tar "$DEEPSQUARE_INPUT"' in script
    assert "export AWS_ACCESS_KEY_ID=AK AWS_DEFAULT_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:9000 " in script
    assert 'sync "$DEEPSQUARE_OUTPUT" s3://results/job --interval 5 </dev/null ) &' in script
    assert 'push "$DEEPSQUARE_OUTPUT" s3://results/job </dev/null' in script
    assert "export DSQ_REGISTRY_PASSWORD='p w'" in script
    assert (
        '_dsq_cargs=(--image library/busybox:1 --registry 127.0.0.1:5000 --mount "$DEEPSQUARE_TMP/m":/m:ro '
        "--workdir /work --map-uid 0)"
    ) in script
    assert (
        '_dsq_run 2 1 64 0 pmix_v4 0 -- "$DSQ_PYTHON" -m dsq_chain.executors.containers run '
        "\"${_dsq_cargs[@]}\" -- /bin/sh -c 'echo hi' </dev/null"
    ) in script
    assert (
        "secret-key-value" not in script.split("# steps")[1].split("# output")[0]
    )  # the S3 secret stays out of the steps


# --------------------------------------------------------------------------- through the executors


def _spec(wf: Workflow, job_id: int) -> ExecSpec:
    return ExecSpec(
        job_id=job_id,
        script=render_script(wf, job_id),
        tasks=wf.tasks,
        cpus_per_task=wf.cpus_per_task,
        mem_per_cpu_mb=wf.mem_per_cpu,
        gpus=wf.gpus,
        time_limit_s=120,
    )


def test_control_flow_on_the_local_executor(tmp_path: Path) -> None:
    ex = LocalExecutor(tmp_path / "local", kill_grace_s=1)
    exec_id = ex.submit(_spec(loads(json.dumps(CONTROL_FLOW)), 11))
    st = wait_final(ex, exec_id, 60)
    work = tmp_path / "local" / "jobs" / exec_id / "work"
    assert st.state is ExecState.COMPLETED, (work.parent / "stderr").read_text()
    _check_control_flow(work / "deepsquare")
    assert (tmp_path / "local" / "cache" / "tmp" / "world").is_dir()


@pytest.mark.slurm
@pytest.mark.xdist_group("slurm")
def test_control_flow_on_slurm(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:  # noqa: F811
    ex = SlurmExecutor(tmp_path / "slurm", slurm_conf=slurm_cluster.conf)
    exec_id = ex.submit(_spec(loads(json.dumps(CONTROL_FLOW)), 12))
    st = wait_final(ex, exec_id, 120)
    job = next((tmp_path / "slurm" / "jobs").iterdir())
    assert st.state is ExecState.COMPLETED, (job / "stderr").read_text() + (job / "stdout").read_text()
    _check_control_flow(job / "work" / "deepsquare")
    steps = slurm_cluster.command("sacct", "-c", "-P", "-n", "-o", "JobID", check=False).stdout
    assert steps is not None


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_control_flow_example_runs(tmp_path: Path) -> None:
    wf = load(Path(__file__).parent.parent / "examples" / "control-flow.yaml")
    result = _bash(render_script(wf, 1), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "warm\nrecovered from 3\nsquares: 1 4 9 16 \nhello grid\n"


@pytest.mark.parametrize("name", ["container.yaml", "mpi-pmix.yaml", "storage.yaml"])
def test_feature_examples_say_what_they_show(name: str) -> None:
    wf = load(Path(__file__).parent.parent / "examples" / name)
    step = wf.steps[0]
    shown = {
        "container.yaml": step.container is not None and step.container.read_only,
        "mpi-pmix.yaml": step.mpi == "pmix_v4" and step.resources is not None and step.resources.tasks == 2,
        "storage.yaml": wf.input is not None and wf.output is not None and wf.output.is_s3,
    }
    assert shown[name]


def test_storage_over_http_and_s3_on_the_local_executor(
    tmp_path: Path,
    http_server: HttpServer,  # noqa: F811
    s3_server: S3Server,  # noqa: F811
) -> None:
    """http input (an archive, unpacked) and output (PUT); S3 input, and S3 output synced while the steps run."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        data = b"1\n2\n3\n"
        info = tarfile.TarInfo("numbers.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (http_server.root / "in.tar.gz").write_bytes(buf.getvalue())
    s3 = s3_server.client()
    s3.create_bucket(Bucket="dsq-in")
    s3.create_bucket(Bucket="dsq-out")
    s3.put_object(Bucket="dsq-in", Key="data/more.txt", Body=b"10\n")
    creds = {"region": "us-east-1", "accessKeyId": "testing", "secretAccessKey": "testing",
             "endpointUrl": s3_server.endpoint}  # fmt: skip
    sum_step = {"run": {"command": 'cat "$DEEPSQUARE_INPUT"/*.txt | awk \'{s+=$1} END {print s}\' '
                                   '> "$DEEPSQUARE_OUTPUT/sum.txt"'}}  # fmt: skip
    http_job = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 64},
        "input": {"http": {"url": f"{http_server.url}/in.tar.gz"}},
        "inputMode": 0o500,
        "output": {"http": {"url": f"{http_server.url}/out/"}},
        "steps": [sum_step],
    }
    s3_job = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 64},
        "input": {"s3": {**creds, "bucketUrl": "s3://dsq-in", "path": "/data/"}},
        "output": {"s3": {**creds, "bucketUrl": "s3://dsq-out", "path": "/run/"}},
        "continuousOutputSync": True,
        "steps": [
            sum_step,
            # while the job still runs, the sync has already uploaded sum.txt
            {"run": {"command": f"{sys.executable} -c \"import boto3,time,sys; c=boto3.client('s3',"
                                f"endpoint_url='{s3_server.endpoint}',region_name='us-east-1',aws_access_key_id='testing',"
                                "aws_secret_access_key='testing'); [time.sleep(0.2) for _ in range(100) if "
                                "c.list_objects_v2(Bucket='dsq-out').get('KeyCount',0)==0]; "
                                "sys.exit(0 if c.list_objects_v2(Bucket='dsq-out').get('KeyCount',0) else 1)\""}},
        ],
    }  # fmt: skip
    ex = LocalExecutor(tmp_path / "local", kill_grace_s=1)
    ids = [ex.submit(_spec(loads(json.dumps(job)), n)) for n, job in ((21, http_job), (22, s3_job))]
    for exec_id in ids:
        st = wait_final(ex, exec_id, 90)
        assert st.state is ExecState.COMPLETED, (tmp_path / "local" / "jobs" / exec_id / "stderr").read_text()
    assert (http_server.root / "out" / "sum.txt").read_text() == "6\n"
    assert s3.get_object(Bucket="dsq-out", Key="run/sum.txt")["Body"].read() == b"10\n"


def test_a_broken_module_is_reported_once_not_at_each_use() -> None:
    doc = yaml.safe_load((Path(__file__).parent.parent / "examples" / "control-flow.yaml").read_text())
    doc["modules"]["greeter"]["inputs"][0]["key"] = "bad-key"
    with pytest.raises(WorkflowError) as info:
        loads(yaml.safe_dump(doc, sort_keys=False), source="job.yaml")
    assert [e.field for e in info.value.errors] == ["modules.greeter.inputs[0].key"]
