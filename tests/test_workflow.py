"""Workflow format: parsing, precise errors, schema agreement, canonical encoding, batch scripts, cost preview."""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from eth_utils.crypto import keccak
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dsq_chain.types import CREDIT_UNIT, Prices, Resources
from dsq_chain.workloads.labels import parse_constraint
from dsq_chain.workloads.workflow import (
    DEFAULT_SHELL,
    MAX_SOURCE_BYTES,
    MAX_WORKFLOW_BYTES,
    CostPreview,
    Step,
    Workflow,
    WorkflowError,
    cost_preview,
    execution_order,
    from_canonical,
    json_schema,
    load,
    loads,
    max_runtime_seconds,
    render_script,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXAMPLE_FILES = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".yaml", ".json"))
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASH = shutil.which("bash")
needs_bash = pytest.mark.skipif(BASH is None, reason="bash is not installed")
SCHEMA = jsonschema.Draft202012Validator(json_schema())

HELLO = """\
name: hello
resources:
  tasks: 1
  cpusPerTask: 1
  memPerCpu: 512
steps:
  - name: say
    run:
      command: echo hello
"""


def _doc(**overrides: Any) -> dict[str, Any]:
    """A valid document as data, with top-level fields replaced."""
    doc: dict[str, Any] = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 512},
        "steps": [{"name": "say", "run": {"command": "echo hello"}}],
    }
    doc.update(overrides)
    return doc


def _steps(*steps: tuple[str, str, list[str]]) -> list[dict[str, Any]]:
    return [{"name": n, "run": {"command": c}, "dependsOn": d} for n, c, d in steps]


def _error(text: str | bytes) -> WorkflowError:
    with pytest.raises(WorkflowError) as info:
        loads(text, source="job.yaml")
    return info.value


# --------------------------------------------------------------------------- examples


def test_there_are_examples_of_every_kind() -> None:
    names = {p.name for p in EXAMPLE_FILES}
    assert {"hello.yaml", "mpi.yaml", "gpu.yaml", "fail.yaml", "sleep.yaml", "pipeline.yaml"} <= names
    assert any(p.suffix == ".json" for p in EXAMPLE_FILES)


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.name)
def test_examples_load_and_match_the_schema(path: Path) -> None:
    wf = load(path)
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    SCHEMA.validate(data)
    SCHEMA.validate(json.loads(wf.canonical()))
    assert from_canonical(wf.canonical()) == wf
    assert loads(json.dumps(data)) == wf


def test_example_contents() -> None:
    gpu = load(EXAMPLES / "gpu.yaml")
    assert gpu.gpus == 1
    assert parse_constraint("gpu.model == A100") in gpu.labels
    mpi = load(EXAMPLES / "mpi.yaml")
    assert mpi.tasks > 1 and mpi.resources.cpus == mpi.tasks * mpi.cpus_per_task
    pipeline = load(EXAMPLES / "pipeline.yaml")
    assert any(step.depends_on for step in pipeline.steps)
    impossible = load(EXAMPLES / "impossible.json")
    assert not impossible.resources.fits_in(Resources(cpus=1024, gpus=64, mem_mb=8 * 1024 * 1024))


# --------------------------------------------------------------------------- the model


def test_loads_hello() -> None:
    wf = loads(HELLO)
    assert wf == Workflow(
        name="hello",
        tasks=1,
        cpus_per_task=1,
        mem_per_cpu=512,
        gpus=0,
        labels=(),
        env={},
        steps=(Step("say", "echo hello", DEFAULT_SHELL, {}, ()),),
    )
    assert wf.resources == Resources(cpus=1, gpus=0, mem_mb=512)


def test_resources_are_totals() -> None:
    wf = loads(json.dumps(_doc(resources={"tasks": 4, "cpusPerTask": 2, "memPerCpu": 1000, "gpus": 3})))
    assert wf.resources == Resources(cpus=8, gpus=3, mem_mb=8000)


def test_workflows_are_hashable_values() -> None:
    a, b = loads(HELLO), loads(HELLO.replace("name: hello\n", "name: hello  # same\n"))
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert hash(a.steps[0]) == hash(b.steps[0])


def test_yaml_1_2_scalars() -> None:
    """yes/no/on/off stay text (YAML 1.2, as JSON); numbers must be quoted to be text."""
    wf = loads(json.dumps(_doc(env={"A": "yes"})).replace('"yes"', "yes"))
    assert wf.env == {"A": "yes"}
    wf = loads(HELLO + "env:\n  NORWAY: NO\n  ON: on\n")
    assert wf.env == {"NORWAY": "NO", "ON": "on"}
    err = _error(HELLO + "env:\n  X: 1\n")
    assert (err.line, err.field) == (11, "env.X")
    assert "quote numbers" in err.expected


def test_integral_floats_count_as_integers_like_in_json_schema() -> None:
    assert loads(HELLO.replace("tasks: 1", "tasks: 2.0")).tasks == 2
    assert loads(json.dumps(_doc()).replace('"memPerCpu": 512', '"memPerCpu": 5.12e2')).mem_per_cpu == 512


def test_json_indented_with_tabs() -> None:
    wf = loads(json.dumps(_doc(), indent="\t"))
    assert wf == loads(json.dumps(_doc()))


def test_surrogate_pairs_from_json_escapes_are_joined() -> None:
    wf = loads(json.dumps(_doc(env={"FACE": "\U0001f600"}), ensure_ascii=True))
    assert wf.env == {"FACE": "\U0001f600"}


def test_json_strings_keep_characters_yaml_would_refuse_or_fold() -> None:
    value = "x\x7f\u2028\x85\ufeff\U0001f600y"
    doc = _doc(env={"A": value})
    assert loads(json.dumps(doc, ensure_ascii=False)).env == {"A": value}
    assert loads(json.dumps(doc, ensure_ascii=False).encode()).env == {"A": value}


def test_docs_show_the_real_canonical_form() -> None:
    docs = (EXAMPLES.parent / "docs" / "workflow.md").read_text()
    assert loads(HELLO).canonical().decode() in docs


def test_bytes_input_with_bom() -> None:
    assert loads(b"\xef\xbb\xbf" + HELLO.encode()) == loads(HELLO)


def test_depends_on_may_name_later_steps() -> None:
    wf = loads(json.dumps(_doc(steps=_steps(("b", "true", ["a"]), ("a", "true", [])))))
    assert [s.name for s in execution_order(wf.steps)] == ["a", "b"]


def test_execution_order_is_stable() -> None:
    wf = loads(
        json.dumps(
            _doc(steps=_steps(("d", "true", ["c"]), ("a", "true", []), ("c", "true", ["a", "b"]), ("b", "true", [])))
        )
    )
    assert [s.name for s in execution_order(wf.steps)] == ["a", "b", "c", "d"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (HELLO.replace("tasks: 1", "tasks: 0"), "job.yaml:3: resources.tasks: expected an integer >= 1, got 0"),
        (HELLO.replace("tasks: 1", "tasks: -2"), "job.yaml:3: resources.tasks: expected an integer >= 1, got -2"),
        (HELLO.replace("tasks: 1", "tasks: two"), 'job.yaml:3: resources.tasks: expected an integer >= 1, got "two"'),
        (HELLO.replace("tasks: 1", "tasks: true"), "job.yaml:3: resources.tasks: expected an integer >= 1, got true"),
        (HELLO.replace("tasks: 1", "tasks: 1.5"), "job.yaml:3: resources.tasks: expected an integer >= 1, got 1.5"),
        (
            HELLO.replace("tasks: 1", "tasks: 4294967296"),
            "job.yaml:3: resources.tasks: expected an integer <= 4294967295, got 4294967296",
        ),
        (
            HELLO.replace("cpusPerTask", "cpuPerTask"),
            "job.yaml:4: resources.cpuPerTask: expected one of tasks, cpusPerTask, memPerCpu, gpus, gpusPerTask, "
            'diskGB, got unknown field "cpuPerTask" (did you mean cpusPerTask?)',
        ),
        (
            HELLO.replace("    run:", "    runs:"),
            "job.yaml:8: steps[0].runs: expected one of name, dependsOn, if, steps, run, for, launch, use, catch, "
            'finally, got unknown field "runs" (did you mean run?)',
        ),
        (
            HELLO.replace("command:", "comand:"),
            "job.yaml:9: steps[0].run.comand: expected one of command, shell, env, workDir, mapUid, mapGid, resources, "
            'container, mpi, network, disableCpuBinding, got unknown field "comand" (did you mean command?)',
        ),
        (
            HELLO.replace("  memPerCpu: 512\n", ""),
            "job.yaml:3: resources.memPerCpu: expected an integer >= 1 (MB per CPU), which is required, got nothing",
        ),
        (
            HELLO.replace("echo hello", '""'),
            'job.yaml:9: steps[0].run.command: expected a non-blank command line, got ""',
        ),
        (
            HELLO.replace("echo hello", "[echo, hello]"),
            "job.yaml:9: steps[0].run.command: expected a command line (text), got a list",
        ),
        (HELLO + "labels:\n  - gpu.model = A100\n", "job.yaml:11: labels[0]: expected an operator"),
        (HELLO + "labels: gpu.model == A100\n", "job.yaml:10: labels: expected a list of label expressions"),
        (HELLO + "env:\n  bad-name: x\n", 'job.yaml:11: env["bad-name"]: expected a variable name'),
        (
            HELLO + "env:\n  DSQ_JOB_ID: x\n",
            "job.yaml:11: env.DSQ_JOB_ID: expected a variable name not starting with DSQ_",
        ),
        (HELLO + "name: again\n", "job.yaml:10: name: expected each key once in a mapping, got a duplicate key"),
        (HELLO.replace("name: hello", "name: ''"), "job.yaml:1: name: expected a name of 1 to 64 characters"),
        (HELLO.replace("name: hello", "name:"), "job.yaml:1: name: expected a name of 1 to 64 characters"),
        (
            HELLO.replace("      command:", "      shell: bash\n      command:"),
            "job.yaml:9: steps[0].run.shell: expected",
        ),
        (HELLO.replace("- name: say", '- name: "say\\tit"'), "job.yaml:7: steps[0].name: expected a step name"),
        ("steps: []\nresources: {tasks: 1, cpusPerTask: 1, memPerCpu: 1}\n", "job.yaml:1: steps: expected a list"),
        ("", "job.yaml:1: expected a workflow (a mapping with resources and steps), got an empty document"),
        (
            "- a\n- b\n",
            "job.yaml:1: expected a mapping with the fields name, resources, labels, env, enableLogging, input, "
            "inputMode, output, continuousOutputSync, modules, steps, got a list",
        ),
        ("resources: {tasks: 1\n", "job.yaml:2: expected valid YAML or JSON"),
        ("a: &x 1\nb: *x\n", "job.yaml:2: expected valid YAML or JSON (no aliases"),
        ("a: !!binary aGVsbG8=\n", "job.yaml:1: a: expected a plain value"),
        ("a: !!set {x}\n", "job.yaml:1: a: expected a plain list or mapping"),
        ("? [a]\n: b\n", "job.yaml:1: expected text as a mapping key, got a list"),
        ("a: " + "[" * 40 + "]" * 40 + "\n", "job.yaml:1: expected valid YAML or JSON (at most 32 levels of nesting)"),
        (b"\xff\xfe", "job.yaml: expected UTF-8 text, got an invalid byte at offset 0"),
        ("a: \x07\n", "job.yaml:1: expected valid YAML or JSON"),
    ],
)
def test_error_messages(text: str | bytes, message: str) -> None:
    err = _error(text)
    lines = str(err).splitlines()
    assert any(line.startswith(message) for line in lines), str(err)  # every error of the file is reported
    assert len(lines) == len(err.errors)
    assert err.source == "job.yaml"


def test_error_attributes() -> None:
    err = _error(HELLO.replace("tasks: 1", "tasks: 0"))
    assert (err.source, err.line, err.field, err.expected, err.got) == (
        "job.yaml",
        3,
        "resources.tasks",
        "an integer >= 1",
        "0",
    )
    assert isinstance(err, ValueError)
    assert str(pickle.loads(pickle.dumps(err))) == str(err)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(HELLO.replace("memPerCpu: 512", "memPerCpu: 0"))
    with pytest.raises(WorkflowError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}:5: resources.memPerCpu: expected an integer >= 1, got 0")


@pytest.mark.parametrize(
    ("steps", "line_field", "expected"),
    [
        (_steps(("a", "true", []), ("a", "true", []), ("b", "true", ["a"])), "steps[2].dependsOn[0]",
         "the name of exactly one step"),
        (_steps(("a", "true", ["b"])), "steps[0].dependsOn[0]", "or the name of a step in this list (a)"),
        (_steps(("a", "true", ["a"])), "steps[0].dependsOn[0]", "a step cannot depend on itself"),
        (_steps(("a", "true", []), ("b", "true", ["a", "a"])), "steps[1].dependsOn[1]", "each step once"),
        (
            _steps(("x", "true", ["b"]), ("a", "true", ["c"]), ("b", "true", ["a"]), ("c", "true", ["b"])),
            "steps[1].dependsOn",
            "no dependency cycle",
        ),
    ],
)
def test_step_cross_checks(steps: list[dict[str, Any]], line_field: str, expected: str) -> None:
    text = yaml.safe_dump(_doc(steps=steps), sort_keys=False)
    err = _error(text)
    assert err.field == line_field
    assert expected in err.expected
    assert err.line is not None


def test_cycle_is_reported_from_its_earliest_step() -> None:
    steps = _steps(("x", "true", ["b"]), ("a", "true", ["c"]), ("b", "true", ["a"]), ("c", "true", ["b"]))
    err = _error(json.dumps(_doc(steps=steps)))
    assert err.got == "a -> c -> b -> a"


def test_resource_totals_are_bounded() -> None:
    doc = _doc(resources={"tasks": 65536, "cpusPerTask": 65536, "memPerCpu": 1})
    assert _error(json.dumps(doc)).expected == "tasks x cpusPerTask <= 4294967295"
    doc = _doc(resources={"tasks": 65536, "cpusPerTask": 1, "memPerCpu": 65536})
    assert "memPerCpu <= 4294967295 MB" in _error(json.dumps(doc)).expected


def test_size_limits() -> None:
    big = _doc(steps=[{"name": "big", "run": {"command": "x" * MAX_WORKFLOW_BYTES}}])
    err = _error(json.dumps(big))
    assert err.expected == f"at most {MAX_WORKFLOW_BYTES} bytes in canonical form"
    comment = "#" * MAX_SOURCE_BYTES + "\n"
    assert "a document of at most" in _error(comment + HELLO).expected
    assert "a document of at most" in _error((comment + HELLO).encode()).expected


def test_the_canonical_limit_is_on_the_canonical_bytes() -> None:
    base = len(loads(json.dumps(_doc())).canonical())
    fits = _doc(steps=[{"name": "say", "run": {"command": "x" * (MAX_WORKFLOW_BYTES - base + len("echo hello"))}}])
    assert len(loads(json.dumps(fits, indent=8)).canonical()) == MAX_WORKFLOW_BYTES


def test_nul_and_lone_surrogates_are_rejected() -> None:
    assert "NUL" in _error(json.dumps(_doc(env={"A": "a\x00b"}))).expected
    assert "lone surrogates" in _error(json.dumps(_doc(env={"A": "\ud800"}))).expected


# --------------------------------------------------------------------------- schema agreement

BAD_DOCUMENTS: list[Any] = [
    [],
    "hello",
    {},
    _doc(resources=None),
    _doc(steps=[]),
    _doc(steps={"name": "a"}),
    _doc(extra=1),
    _doc(name=""),
    _doc(name="x" * 65),
    _doc(name="a\nb"),
    _doc(name=5),
    _doc(resources={"tasks": 1, "cpusPerTask": 1}),
    _doc(resources={"tasks": 0, "cpusPerTask": 1, "memPerCpu": 1}),
    _doc(resources={"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1, "gpus": -1}),
    _doc(resources={"tasks": 1, "cpusPerTask": 1, "memPerCpu": 1, "gpus": True}),
    _doc(resources={"tasks": 1.5, "cpusPerTask": 1, "memPerCpu": 1}),
    _doc(resources={"tasks": "1", "cpusPerTask": 1, "memPerCpu": 1}),
    _doc(resources={"tasks": 2**32, "cpusPerTask": 1, "memPerCpu": 1}),
    _doc(resources={"tasks": 1, "cpuPerTask": 1, "memPerCpu": 1}),
    _doc(labels="gpu.model == A100"),
    _doc(labels=[5]),
    _doc(labels=["gpu.model = A100"]),
    _doc(labels=["gpu.model"]),
    _doc(labels=["zonein a"]),
    _doc(labels=["a === b"]),
    _doc(env=["A=1"]),
    _doc(env={"1A": "x"}),
    _doc(env={"A-B": "x"}),
    _doc(env={"DSQ_X": "x"}),
    _doc(env={"A": 1}),
    _doc(env={"A": None}),
    _doc(env={"A": "a\x00"}),
    _doc(env={"A" * 129: "x"}),
    _doc(steps=[{"name": "a\n", "run": {"command": "true"}}]),
    _doc(steps=[{"name": "a", "run": {"command": " \n\t"}}]),
    _doc(steps=[{"name": "a", "run": {"command": "a\x00b"}}]),
    _doc(steps=[{"name": "a", "run": {"command": "true", "shell": "bash"}}]),
    _doc(steps=[{"name": "a", "run": {"command": "true", "shell": "/bin/ba sh"}}]),
    _doc(steps=[{"name": "a", "run": {"command": "true", "shell": "/" + "x" * 255}}]),
    _doc(steps=[{"name": "a", "run": {"command": "true", "env": {"A": 2}}}]),
    _doc(steps=[{"name": "a", "run": {"command": "true", "image": "ubuntu"}}]),
    _doc(steps=[{"name": "a", "run": {"command": "true"}, "dependsOn": "b"}]),
    _doc(steps=[{"name": "a", "run": {"command": "true"}, "dependson": []}]),
    _doc(steps=[{"name": "a", "run": "true"}]),
]


#: Documents the first format refused and DeepSquare's accepts: a step that does nothing, no name, free-text names.
NOW_ACCEPTED = [
    _doc(steps=[{"name": "a"}]),
    _doc(steps=[{"run": {"command": "true"}}]),
    _doc(steps=[{"name": "a b", "run": {"command": "true"}}]),
    _doc(steps=[{"name": "a" * 65, "run": {"command": "true"}}]),
]


@pytest.mark.parametrize("doc", NOW_ACCEPTED)
def test_deepsquare_step_names_are_accepted_by_schema_and_loader(doc: Any) -> None:
    assert SCHEMA.is_valid(doc)
    assert loads(json.dumps(doc)).canonical() == loads(loads(json.dumps(doc)).canonical()).canonical()


@pytest.mark.parametrize("doc", BAD_DOCUMENTS)
def test_bad_documents_are_rejected_by_schema_and_loader(doc: Any) -> None:
    assert not SCHEMA.is_valid(doc), f"the schema accepts {doc!r}"
    with pytest.raises(WorkflowError):
        loads(json.dumps(doc))


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


# Near-valid documents: each field drawn from valid and invalid values that the schema can judge.
_near_strings = st.sampled_from(["a", "build-2", "", "a b", "a\n", "x" * 64, "x" * 65, "é", "DSQ_X", "_x", "1A", "A"])
_near_ints = st.sampled_from([0, 1, 2, -1, 1.0, 2.5, True, "1", None, 4294967296])
_near_labels = st.sampled_from(["gpu.model == A100", "mem.gb>=24", "zone in a,b", "a = b", "a", "a === b", "a <5", 5])
_near_text = st.sampled_from(["echo hi", "", " ", "a\x00", "x", "ünï", 3, None, ["echo"]])


@st.composite
def near_valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    resources: dict[str, Any] = {k: draw(_near_ints) for k in ("tasks", "cpusPerTask", "memPerCpu")}
    if draw(st.booleans()):
        resources["gpus"] = draw(_near_ints)
    doc: dict[str, Any] = {"resources": resources}
    if draw(st.booleans()):
        doc["name"] = draw(_near_strings)
    if draw(st.booleans()):
        doc["labels"] = draw(st.lists(_near_labels, max_size=3))
    if draw(st.booleans()):
        doc["env"] = draw(st.dictionaries(_near_strings, _near_text, max_size=3))
    names = draw(st.lists(_near_strings, min_size=0, max_size=3, unique=True))
    steps = []
    for index, name in enumerate(names):
        run: dict[str, Any] = {"command": draw(_near_text)}
        if draw(st.booleans()):
            run["shell"] = draw(st.sampled_from(["/bin/bash", "bash", "/usr/bin/env", "/bin/b a"]))
        step: dict[str, Any] = {"name": name, "run": run}
        if draw(st.booleans()):
            step["dependsOn"] = draw(st.lists(st.sampled_from(names[:index] or ["a b"]), max_size=2))
        steps.append(step)
    doc["steps"] = steps
    return doc


@FUZZ
@given(near_valid_documents())
def test_schema_and_loader_agree(doc: dict[str, Any]) -> None:
    schema_ok = SCHEMA.is_valid(doc)
    try:
        loads(json.dumps(doc))
    except WorkflowError as err:
        assert not schema_ok, f"the loader rejects what the schema accepts: {err}"
    else:
        assert schema_ok, "the loader accepts what the schema rejects"


# --------------------------------------------------------------------------- canonical encoding


def test_canonical_is_compact_sorted_and_explicit() -> None:
    canonical = loads(HELLO).canonical()
    assert canonical == (
        b'{"env":{},"labels":[],"name":"hello","resources":{"cpusPerTask":1,"gpus":0,"memPerCpu":512,"tasks":1},'
        b'"steps":[{"dependsOn":[],"name":"say","run":{"command":"echo hello","env":{},"shell":"/bin/sh"}}]}'
    )
    assert loads(HELLO).hash() == keccak(canonical)


def test_canonical_ignores_layout_format_and_key_order() -> None:
    yaml_text = """
steps:
- run: {shell: /bin/sh, command: echo hello, env: {}}
  name: say
  dependsOn: []
resources: {memPerCpu: 512, gpus: 0, cpusPerTask: 1, tasks: 1}   # explicit defaults
labels: []
name: hello
"""
    json_text = json.dumps(json.loads(loads(HELLO).canonical()), indent=3)
    assert loads(yaml_text).canonical() == loads(json_text).canonical() == loads(HELLO).canonical()
    assert loads(yaml_text).hash() == loads(HELLO).hash()


def test_labels_are_canonicalised() -> None:
    a = loads(HELLO + "labels: ['mem.gb>=24', 'zone in a , b']\n")
    b = loads(HELLO + "labels: ['mem.gb >= 24', 'zone in a,b']\n")
    assert a.canonical() == b.canonical()
    assert b'"labels":["mem.gb >= 24","zone in a,b"]' in a.canonical()


def test_canonical_keeps_unicode_as_utf8() -> None:
    wf = loads(HELLO.replace("echo hello", "echo héllo ✓"))
    assert "echo héllo ✓".encode() in wf.canonical()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"null",
        b"[]",
        b"\xff",
        b"{",
        b'{"a":NaN}',
        b"[" * 5000 + b"]" * 5000,
        b"1" * 5000,
        b" " + loads(HELLO).canonical(),
        loads(HELLO).canonical().replace(b'"gpus":0,', b""),
        loads(HELLO).canonical().replace(b'"labels":[],"name":"hello"', b'"name":"hello","labels":[]'),
        loads(HELLO).canonical().replace(b":1,", b": 1,", 1),
        loads(HELLO).canonical().replace(b'"tasks":1', b'"tasks":1.0'),
        loads(HELLO).canonical().replace(b'"name":"hello"', b'"name":"hello","name":"hello"'),
        loads(HELLO).canonical().replace(b"hello", b"h\\u00e9llo", 1),
        b"x" * (MAX_WORKFLOW_BYTES + 1),
    ],
)
def test_from_canonical_rejects_anything_else(data: bytes) -> None:
    with pytest.raises(WorkflowError) as info:
        from_canonical(data)
    assert info.value.source == "<canonical>"


# Valid workflows as data, for round trips.
_env_names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True).filter(lambda n: not n.startswith("DSQ_"))
_safe_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=30)
_step_names = st.from_regex(r"[A-Za-z0-9_-]{1,10}", fullmatch=True)


@st.composite
def valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    names = draw(st.lists(_step_names, min_size=1, max_size=4, unique=True))
    steps = []
    for index, name in enumerate(names):
        run: dict[str, Any] = {"command": draw(_safe_text.filter(lambda t: t.strip() != ""))}
        if draw(st.booleans()):
            run["shell"] = draw(st.sampled_from(["/bin/sh", "/bin/bash", "/usr/bin/env"]))
        if draw(st.booleans()):
            run["env"] = draw(st.dictionaries(_env_names, _safe_text, max_size=2))
        step: dict[str, Any] = {"name": name, "run": run}
        if index and draw(st.booleans()):
            step["dependsOn"] = draw(st.lists(st.sampled_from(names[:index]), unique=True, max_size=2))
        steps.append(step)
    doc = _doc(
        resources={"tasks": draw(st.integers(1, 64)), "cpusPerTask": draw(st.integers(1, 64)), "memPerCpu": 1024},
        env=draw(st.dictionaries(_env_names, _safe_text, max_size=3)),
        labels=draw(st.lists(st.sampled_from(["gpu.model == A100", "mem.gb>=24", "zone in a , b", "n != 2.5"]))),
        steps=steps,
    )
    if draw(st.booleans()):
        doc["name"] = draw(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=64))
    return doc


@FUZZ
@given(valid_documents())
def test_valid_documents_round_trip(doc: dict[str, Any]) -> None:
    assert SCHEMA.is_valid(doc)
    wf = loads(json.dumps(doc))
    assert from_canonical(wf.canonical()) == wf
    assert loads(yaml.safe_dump(doc, default_style='"', allow_unicode=True)).canonical() == wf.canonical()
    assert loads(wf.canonical()) == wf
    assert SCHEMA.is_valid(json.loads(wf.canonical()))


# --------------------------------------------------------------------------- fuzzing: only WorkflowError, never a hang


def _only_workflow_errors(text: str | bytes) -> None:
    try:
        wf = loads(text)
    except WorkflowError as err:
        assert len(str(err).splitlines()) == len(err.errors)
        return
    assert from_canonical(wf.canonical()) == wf


@FUZZ
@pytest.mark.timeout(60)
@given(st.text(max_size=300))
def test_fuzz_text(text: str) -> None:
    _only_workflow_errors(text)


@FUZZ
@pytest.mark.timeout(60)
@given(st.binary(max_size=300))
def test_fuzz_bytes(data: bytes) -> None:
    _only_workflow_errors(data)
    with contextlib.suppress(WorkflowError):
        from_canonical(data)


_yaml_tokens = st.sampled_from(
    ["\n", " ", "  ", "- ", ": ", "{", "}", "[", "]", ",", "&a ", "*a", "!!str ", "!!int ", "!x ", "? ", "|", ">",
     "'", '"', "#", "---\n", "...\n", "%YAML 1.2\n", "\t", "resources", "steps", "tasks", "name", "run", "command",
     "1", "-1", "0x1F", "1e3", ".inf", "null", "~", "true", "yes", "<<", "\\u0000", "\\ud800", "é"]
)  # fmt: skip


@FUZZ
@pytest.mark.timeout(60)
@given(st.lists(_yaml_tokens, max_size=60).map("".join))
def test_fuzz_yaml_shaped_text(text: str) -> None:
    _only_workflow_errors(text)


@FUZZ
@pytest.mark.timeout(60)
@given(st.sampled_from(EXAMPLE_FILES), st.data())
def test_fuzz_mutated_examples(path: Path, data: st.DataObject) -> None:
    text = path.read_text()
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(text)))
        cut = data.draw(st.integers(0, 3))
        insert = data.draw(st.one_of(st.just(""), _yaml_tokens, st.text(max_size=3)))
        text = text[:at] + insert + text[at + cut :]
    _only_workflow_errors(text)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@pytest.mark.timeout(60)
@given(_json_values)
def test_fuzz_yaml_documents(value: Any) -> None:
    _only_workflow_errors(yaml.safe_dump(value))
    _only_workflow_errors(json.dumps(value))
    with contextlib.suppress(WorkflowError):
        from_canonical(json.dumps(value).encode())


def test_billion_laughs_and_deep_nesting_are_refused_quickly() -> None:
    laughs = "a: &a [x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(20)
    )
    assert "no aliases" in _error(laughs).expected
    assert "levels of nesting" in _error("[" * 50000).expected
    assert "levels of nesting" in _error("a:\n" + "".join(" " * i + "- \n" for i in range(1, 100))).expected


# --------------------------------------------------------------------------- batch script


def _run(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert BASH is not None
    path = cwd / "job.sh"
    path.write_text(script)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(cwd)}
    return subprocess.run([BASH, str(path)], cwd=cwd, env=env, capture_output=True, text=True, timeout=30)


@needs_bash
def test_script_runs_steps_in_dependency_order(tmp_path: Path) -> None:
    steps = _steps(
        ("report", 'echo "report $DSQ_STEP" >> log', ["test"]),
        ("fetch", "echo fetch >> log", []),
        ("build", "echo build >> log", ["fetch"]),
        ("test", "echo test >> log", ["build"]),
    )
    wf = loads(json.dumps(_doc(steps=steps)))
    result = _run(render_script(wf, 42), tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "log").read_text().split("\n") == ["fetch", "build", "test", "report report", ""]


@needs_bash
def test_script_stops_at_the_first_failing_step_with_its_code(tmp_path: Path) -> None:
    result = _run(render_script(load(EXAMPLES / "fail.yaml"), 1), tmp_path)
    assert result.returncode == 3
    assert result.stdout == "this step succeeds\n"
    assert "about to fail" in result.stderr
    assert "not reached" not in result.stdout


@needs_bash
def test_a_failing_command_in_the_middle_of_a_step_does_not_stop_it(tmp_path: Path) -> None:
    """Only a step's exit status counts, as in a batch script: the step's own shell decides."""
    wf = loads(
        json.dumps(_doc(steps=_steps(("a", "false; echo still here", []), ("b", "exit 7", []), ("c", "echo", []))))
    )
    result = _run(render_script(wf, 1), tmp_path)
    assert (result.returncode, result.stdout) == (7, "still here\n")


@needs_bash
def test_script_exports_job_id_and_env_and_isolates_step_env(tmp_path: Path) -> None:
    doc = _doc(
        env={"GREETING": "hello"},
        steps=[
            {
                "name": "one",
                "run": {"command": 'echo "$GREETING $DSQ_JOB_ID $DSQ_STEP $ONLY_ONE"', "env": {"ONLY_ONE": "1"}},
            },
            {"name": "two", "run": {"command": 'echo "$GREETING $DSQ_JOB_ID $DSQ_STEP ${ONLY_ONE-unset}"'}},
        ],
    )
    result = _run(render_script(loads(json.dumps(doc)), 12345), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello 12345 one 1\nhello 12345 two unset\n"


HOSTILE = [
    "$(touch pwned)",
    "`touch pwned`",
    "'; touch pwned; '",
    '"; touch pwned; "',
    "a\nb\n\ttouch pwned",
    "\\'\\\"$HOME",
    "EOF\ntouch pwned\nEOF",
    "${PATH:0:1}!$?*",
    "ünïcødé ✓ \x01\x7f",
    "",
]


@needs_bash
def test_hostile_values_are_passed_verbatim(tmp_path: Path) -> None:
    env = {f"V{i}": value for i, value in enumerate(HOSTILE)}
    doc = _doc(
        env=env,
        steps=[
            {
                "name": "dump",
                "run": {
                    "shell": "/bin/bash",
                    "env": {f"S{i}": value for i, value in enumerate(HOSTILE)},
                    "command": "for v in " + " ".join(f"V{i} S{i}" for i in range(len(HOSTILE))) + "; do\n"
                    '  printf "%s\\0" "${!v}"\ndone > values\n',
                },
            }
        ],
    )
    result = _run(render_script(loads(json.dumps(doc)), 1), tmp_path)
    assert result.returncode == 0, result.stderr
    values = (tmp_path / "values").read_bytes().decode().split("\0")[:-1]
    assert values == [v for value in HOSTILE for v in (value, value)]
    assert not (tmp_path / "pwned").exists()


@needs_bash
@pytest.mark.parametrize("command", [*HOSTILE[:-1], "echo 'it''s'", "exit 0\n'", "-c"])
def test_hostile_commands_reach_the_shell_verbatim(tmp_path: Path, command: str) -> None:
    """The step's shell gets exactly ``-c <command>``: nothing in a command can break out of the script."""
    recorder = tmp_path / "recorder"
    recorder.write_text('#!/bin/sh\nprintf "%s\\0" "$@" > "$PWD/args"\n')
    recorder.chmod(0o755)
    steps = [
        {"name": "record", "run": {"shell": str(recorder), "command": command}},
        {"name": "after", "run": {"command": "echo done"}},
    ]
    result = _run(render_script(loads(json.dumps(_doc(steps=steps))), 1), tmp_path)
    assert (result.returncode, result.stdout) == (0, "done\n"), result.stderr
    assert (tmp_path / "args").read_bytes().decode().split("\0")[:-1] == ["-c", command]
    assert not (tmp_path / "pwned").exists()


@needs_bash
def test_commands_with_quotes_and_heredocs_run(tmp_path: Path) -> None:
    command = "echo 'it'\\''s' \"$HOME\"\ncat <<'X'\n$(touch pwned) `touch pwned` 'q' \"qq\"\nX\n"
    result = _run(render_script(loads(json.dumps(_doc(steps=_steps(("q", command, []))))), 1), tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"it's {tmp_path}\n$(touch pwned) `touch pwned` 'q' \"qq\"\n"
    assert not (tmp_path / "pwned").exists()


@needs_bash
def test_steps_do_not_read_the_script_from_stdin(tmp_path: Path) -> None:
    """Even when the executor feeds the script on stdin, a step that reads stdin cannot eat the rest of it."""
    assert BASH is not None
    wf = loads(json.dumps(_doc(steps=_steps(("read", "cat > eaten", []), ("after", "echo after", [])))))
    result = subprocess.run(
        [BASH], input=render_script(wf, 1), cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False
    )
    assert result.stdout == "after\n"
    assert (tmp_path / "eaten").read_text() == ""


@needs_bash
def test_step_shell_is_used(tmp_path: Path) -> None:
    wf = loads(
        json.dumps(
            _doc(
                steps=[
                    {"name": "bash", "run": {"shell": "/bin/bash", "command": 'echo "${BASH_VERSION:+bash}"'}},
                    {"name": "missing", "run": {"shell": "/no/such/shell", "command": "true"}},
                ]
            )
        )
    )
    result = _run(render_script(wf, 1), tmp_path)
    assert result.stdout == "bash\n"
    assert result.returncode in (126, 127)


@needs_bash
@pytest.mark.parametrize("name", ["hello.yaml", "mpi.yaml", "pipeline.yaml", "gpu.yaml"])
def test_examples_run(tmp_path: Path, name: str) -> None:
    result = _run(render_script(load(EXAMPLES / name), 7), tmp_path)
    assert result.returncode == 0, result.stderr
    if name == "hello.yaml":
        assert result.stdout == "hello from job 7\n"
    if name == "mpi.yaml":
        assert result.stdout == "sum of 1..4000 = 8002000\n"


def test_render_script_refuses_hand_built_invalid_workflows() -> None:
    wf = loads(HELLO)
    bad_env = Workflow(wf.name, 1, 1, 1, 0, (), {"A;touch pwned;B": "x"}, wf.steps)
    with pytest.raises(WorkflowError):
        render_script(bad_env, 1)
    bad_step = Workflow(wf.name, 1, 1, 1, 0, (), {}, (Step("a\ntouch pwned", "true"),))
    with pytest.raises(WorkflowError):
        render_script(bad_step, 1)
    with pytest.raises(WorkflowError):
        render_script(Workflow(wf.name, 1, 1, 1, 0, (), {"A": "\ud800"}, wf.steps), 1)
    with pytest.raises(ValueError):
        render_script(wf, -1)


def test_script_header() -> None:
    script = render_script(loads(HELLO), 9)
    assert script.startswith("#!/bin/bash\n")
    assert f"0x{loads(HELLO).hash().hex()}" in script
    assert script.endswith("exit $_dsq_rc\n")


# --------------------------------------------------------------------------- cost preview


def test_max_runtime_seconds() -> None:
    assert max_runtime_seconds(10 * CREDIT_UNIT, CREDIT_UNIT) == 600
    assert max_runtime_seconds(100, 7) == 857
    assert max_runtime_seconds(0, 7) == 0
    with pytest.raises(ValueError):
        max_runtime_seconds(100, 0)
    with pytest.raises(ValueError):
        max_runtime_seconds(-1, 1)


def test_cost_preview() -> None:
    wf = loads(json.dumps(_doc(resources={"tasks": 2, "cpusPerTask": 2, "memPerCpu": 1024, "gpus": 1})))
    prices = Prices.from_units(per_cpu_minute=100_000, per_gpu_minute=1_000_000, per_gb_minute=50_000)
    preview = cost_preview(wf, 25 * CREDIT_UNIT, prices)
    assert preview.rate_per_minute == 4 * 100_000 + 1_000_000 + 4 * 50_000 == prices.rate_for(wf.resources)
    assert preview.max_runtime_seconds == 25 * CREDIT_UNIT * 60 // 1_600_000 == 937
    assert preview.credits == 25 * CREDIT_UNIT
    assert str(preview) == "4 cpus, 1 gpu, 4096 MB at 1.6 credits/min: 25 credits buy 15 min 37 s"
    assert str(CostPreview(1, 3725, 62)) == "0.000001 credits/min: 0.000062 credits buy 1 h 2 min 5 s"
    with pytest.raises(ValueError):
        cost_preview(wf, CREDIT_UNIT, Prices.from_units(per_cpu_minute=0))
