"""Akash SDL → grid jobs: the real-world corpus (tests/data/akash, see SOURCES) and the mapping rules.

Every SDL of the corpus either translates or is refused with a path and a named reason; none crashes
the translator. The mapping of each field is checked on small documents.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from dsq_chain.workloads.sdl import Conversion, SdlError, parse_cpu, parse_size, translate, translate_file

ROOT = Path(__file__).resolve().parents[1]
CORPUS = sorted((ROOT / "tests" / "data" / "akash").rglob("*.y*ml"))


def test_the_corpus_has_its_sources_listed() -> None:
    listed = (ROOT / "tests" / "data" / "akash" / "SOURCES").read_text()
    assert len(CORPUS) >= 100
    for f in CORPUS:
        path = f.name.replace("__", "/")
        assert f"| {path} |" in listed or f"/{path} |" in listed, f"{f.name} has no line in SOURCES"


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_real_sdl_translates_or_is_refused_with_a_reason(path: Path) -> None:
    try:
        tr = translate_file(path)
    except SdlError as e:
        assert e.problems and all(":" in p for p in e.problems), e.problems  # path: reason
        return
    assert tr.jobs or tr.refused, "neither a job nor a refusal"
    for where, why in tr.refused.items():
        assert where and len(why) > 10, (where, why)
    for job in tr.jobs:
        assert job.workflow["steps"][0]["run"]["container"]["image"]
        assert job.max_rate > 0 and job.count >= 1


def _doc(**service: object) -> dict[str, object]:
    svc = {"image": "busybox", "command": ["sh", "-c"], "args": ["echo hi"], **service}
    return {
        "version": "2.0",
        "services": {"app": svc},
        "profiles": {
            "compute": {"app": {"resources": {"cpu": {"units": "1500m"}, "memory": {"size": "3Gi"},
                                              "storage": [{"size": "10Gi"}]}}},
            "placement": {"dc": {"attributes": {"region": "eu-west"},
                                 "pricing": {"app": {"denom": "uakt", "amount": 1000}}}},
        },
        "deployment": {"app": {"dc": {"profile": "app", "count": 3}}},
    }


def test_a_batch_service_maps_field_by_field() -> None:
    tr = translate(_doc(env=["A=1", "B=x=y"]))
    assert tr.ok and len(tr.jobs) == 1
    job = tr.jobs[0]
    wf = job.workflow
    assert wf["resources"] == {"tasks": 1, "cpusPerTask": 2, "memPerCpu": 1536, "gpus": 0}  # 1.5 cores rounded up
    assert wf["steps"][0]["run"] == {"container": {"image": "busybox"}, "command": "sh -c 'echo hi'"}
    assert wf["env"] == [{"key": "A", "value": "1"}, {"key": "B", "value": "x=y"}]
    assert "region == eu-west" in wf["labels"] and "storage.ephemeral.gb >= 11" in wf["labels"]
    assert job.count == 3  # replicas become a job array
    assert job.max_rate == int(Decimal(1000) * 60 / Decimal("6.098"))
    notes = {m.path: m for m in tr.table}
    assert "rounded up" in notes["profiles.compute.app.resources.cpu.units"].note


def test_gpu_vendor_and_models_become_label_constraints() -> None:
    doc = _doc()
    res = doc["profiles"]["compute"]["app"]["resources"]  # type: ignore[index]
    res["gpu"] = {"units": 2, "attributes": {"vendor": {"nvidia": [{"model": "a100"}, {"model": "h100"}]}}}
    tr = translate(doc)
    wf = tr.jobs[0].workflow
    assert wf["resources"]["gpus"] == 2
    assert "gpu.vendor == nvidia" in wf["labels"] and "gpu.model in a100,h100" in wf["labels"]


def test_a_persistent_volume_asks_for_provider_persistent_storage() -> None:
    doc = _doc(params={"storage": {"data": {"mount": "/data"}}})
    res = doc["profiles"]["compute"]["app"]["resources"]  # type: ignore[index]
    res["storage"] = [{"size": "1Gi"}, {"name": "data", "size": "50Gi", "attributes": {"persistent": True}}]
    tr = translate(doc)
    assert "storage.persistent.gb >= 54" in tr.jobs[0].workflow["labels"]  # 50 GiB = 53.7 GB, rounded up


@pytest.mark.parametrize(("change", "path", "words"), [
    (lambda d: d["services"]["app"].update(expose=[{"port": 80, "to": [{"global": True}]}]),
     "services.app.expose[0]", "global endpoint"),
    (lambda d: d["services"]["app"].pop("command") and d["services"]["app"].pop("args"),
     "services.app.command", "explicit command"),
    (lambda d: d.update(endpoints={"ip1": {"kind": "ip"}}), "endpoints.ip1", "IP lease"),
    (lambda d: d["profiles"]["placement"]["dc"]["pricing"]["app"].update(denom="ibc/27394FB0"),
     "profiles.placement.dc.pricing.app.denom", "no conversion"),
    (lambda d: d["profiles"]["compute"]["app"]["resources"]["cpu"].update(units="lots"),
     "profiles.compute.app.resources.cpu.units", "not a CPU quantity"),
])
def test_what_has_no_batch_meaning_is_refused_with_path_and_reason(change: object, path: str, words: str) -> None:
    doc = _doc()
    change(doc)  # type: ignore[operator]
    tr = translate(doc)
    assert not tr.ok and path in tr.refused, tr.refused
    assert words in tr.refused[path]


def test_interdependent_services_are_refused() -> None:
    doc = _doc()
    doc["services"]["db"] = {"image": "postgres", "command": ["postgres"],  # type: ignore[index]
                             "expose": [{"port": 5432, "to": [{"service": "app"}]}]}
    doc["deployment"]["db"] = {"dc": {"profile": "app", "count": 1}}  # type: ignore[index]
    tr = translate(doc)
    assert "services.app" in tr.refused and "interdependent" in tr.refused["services.app"]


def test_signed_by_is_dropped_and_said_so_or_refused_when_strict() -> None:
    doc = _doc()
    doc["profiles"]["placement"]["dc"]["signedBy"] = {"anyOf": ["akash1xyz"]}  # type: ignore[index]
    tr = translate(doc)
    assert tr.ok and any(m.path.endswith("signedBy") and not m.mapped and "dropped" in m.note for m in tr.table)
    assert "profiles.placement.dc.signedBy" in translate(doc, strict=True).refused


def test_unreadable_sdls_name_every_problem_at_once(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("version: '3.0'\nservices:\n  a: {command: x}\nprofiles: {}\nextra: 1\n")
    with pytest.raises(SdlError) as e:
        translate_file(bad)
    text = str(e.value)
    for needle in ("version", "deployment: missing", "services.a.image", "extra: unknown", "profiles.compute"):
        assert needle in text, text


@pytest.mark.parametrize(("text", "cores"), [("100m", Decimal("0.1")), ("0.5", Decimal("0.5")), (2, Decimal(2))])
def test_cpu_units(text: object, cores: Decimal) -> None:
    assert parse_cpu(text) == cores


@pytest.mark.parametrize(("text", "size"), [("512Mi", 512 * 2**20), ("1Gi", 2**30), ("1G", 10**9), ("1024", 1024),
                                            ("1.5Gi", 3 * 2**29), ("10k", 10_000)])
def test_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_conversion_is_explicit_and_printed() -> None:
    conv = Conversion({"uakt": Decimal(2)}, Decimal(6))
    assert conv.cap_per_minute("uakt", Decimal(100)) == 2000
    assert conv.describe() == "1 uakt = 2 credit unit(s); 6 s per block"


@pytest.mark.parametrize("name", ["batch.yml", "gpu.yml"])
def test_the_shipped_examples_translate(name: str) -> None:
    tr = translate_file(ROOT / "examples" / "akash" / name)
    assert tr.ok, tr.refused
