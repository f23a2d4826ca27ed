"""Akash SDL (Stack Definition Language, versions 2.0 and 2.1) → grid workflows; pure, no chain.

An SDL describes long-running services behind exposed ports; the grid runs batch jobs. This module
reads an SDL file, checks it against the structure of Akash's published input schema (every error at
once, each with its path), and translates every service it can into one workflow document in the
grid's workflow format (a container step), with a table row for every SDL field saying what it became
or why it could not become anything. What has no batch meaning is **refused** with the SDL path and a
named reason, before any credit is locked:

* an exposed port (``expose``), a global endpoint or an IP lease (``endpoints``) — a batch job serves
  nobody;
* services that depend on each other (``dependencies``, or an ``expose.to.service``) — the grid has no
  network between jobs;
* a service with no ``command`` — a grid job runs an explicit command;
* a compute profile whose CPU, memory or GPU cannot be read.

Mapping (the same table ``docs/akash.md`` shows):

* ``services.<s>.image`` / ``command`` + ``args`` / ``env`` / ``credentials`` → a container step
  (``run.container.image``, ``run.command``, ``env``, ``run.container.username/password``);
* ``profiles.compute.<p>.resources.cpu.units`` → ``cpusPerTask``, rounded **up** to whole cores
  (``100m`` → 1; said in the table); ``memory.size`` → ``memPerCpu`` (MiB per core, rounded up);
  ``gpu.units`` → ``gpus``; ``gpu.attributes.vendor.<v>[].model`` → label constraints
  ``gpu.vendor == v`` and ``gpu.model in m1,m2``; ephemeral ``storage`` → ``storage.ephemeral.gb >=``;
  a persistent volume → ``storage.persistent.gb >=`` (the provider resource a provider's self-check
  measures and advertises);
* ``profiles.placement.<p>.attributes`` → label constraints ``key == value``; ``signedBy`` (Akash
  auditors) has no grid equivalent: dropped, and said so (``strict=True`` refuses it instead);
* ``pricing.<s>.amount`` per block → the job's price cap in credit units per minute through an
  explicit :class:`Conversion` (credit units per denomination unit, seconds per block), printed;
* ``deployment.<s>.<p>.count`` → a job array of that many jobs (Akash's replicas are independent
  copies of the service; a grid array keeps that meaning, each replica its own job).
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "Conversion",
    "Mapping_",
    "SdlError",
    "TranslatedJob",
    "Translation",
    "load_sdl",
    "translate",
    "translate_file",
]

SUPPORTED_VERSIONS = ("2.0", "2.1")
#: Average Akash block time, the default of :class:`Conversion`.
AKASH_SECONDS_PER_BLOCK = Decimal("6.098")

_SIZE_SUFFIXES = {
    "": 1, "k": 10**3, "Ki": 2**10, "M": 10**6, "Mi": 2**20, "G": 10**9, "Gi": 2**30,
    "T": 10**12, "Ti": 2**40, "P": 10**15, "Pi": 2**50, "E": 10**18, "Ei": 2**60,
}
_SIZE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kKMGTPE]i?)?[bB]?\s*$")
_CPU_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(m?)\s*$")
_TOP_LEVEL = ("version", "include", "services", "profiles", "deployment", "endpoints", "reclamation")
_SERVICE_KEYS = ("image", "command", "args", "env", "expose", "dependencies", "params", "credentials")


class SdlError(ValueError):
    """An SDL that cannot be read: every problem at once, each ``path: what is wrong``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: " + "; ".join(problems))


@dataclass(frozen=True)
class Conversion:
    """How an Akash price (``amount`` of ``denom`` per block) becomes a grid price cap (credit units/min).

    ``units_per_denom`` maps a denomination to credit units (1 credit = 1,000,000 units) per unit of
    that denomination; the default treats one micro-unit (``uakt``, ``uact``, ``usdc`` as
    ``ibc/...``-free names) as one credit unit. A denomination not listed is refused by name.
    """

    units_per_denom: Mapping[str, Decimal] = field(
        default_factory=lambda: {"uakt": Decimal(1), "uact": Decimal(1), "usdc": Decimal(1)}
    )
    seconds_per_block: Decimal = AKASH_SECONDS_PER_BLOCK

    def cap_per_minute(self, denom: str, amount: Decimal) -> int:
        """Credit units per minute for ``amount`` of ``denom`` per block, rounded down (a cap never rises)."""
        rate = self.units_per_denom[denom]
        return int(amount * rate * Decimal(60) / self.seconds_per_block)

    def describe(self) -> str:
        denoms = ", ".join(f"1 {d} = {v} credit unit(s)" for d, v in sorted(self.units_per_denom.items()))
        return f"{denoms}; {self.seconds_per_block} s per block"


@dataclass(frozen=True)
class Mapping_:
    """One row of the translation table: an SDL path, what it became (or ``None``) and why."""

    path: str
    became: str | None
    note: str = ""

    @property
    def mapped(self) -> bool:
        return self.became is not None


@dataclass(frozen=True)
class TranslatedJob:
    """The grid job a service becomes: a workflow document, its price cap and array size."""

    service: str
    placement: str
    workflow: dict[str, Any]
    max_rate: int
    count: int


@dataclass
class Translation:
    """What an SDL becomes: jobs, refusals (path → reason) and the mapping table."""

    source: str
    version: str
    jobs: list[TranslatedJob] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    table: list[Mapping_] = field(default_factory=list)
    conversion: Conversion = field(default_factory=Conversion)

    @property
    def ok(self) -> bool:
        """True when every service translates (nothing refused)."""
        return not self.refused and bool(self.jobs)

    def note(self, path: str, became: str | None, note: str = "") -> None:
        self.table.append(Mapping_(path, became, note))

    def refuse(self, path: str, reason: str) -> None:
        self.refused[path] = reason
        self.table.append(Mapping_(path, None, f"refused: {reason}"))


# --------------------------------------------------------------------------- reading


def load_sdl(text: str, source: str = "<sdl>") -> dict[str, Any]:
    """The SDL document, checked against the structure of Akash's input schema; raises :class:`SdlError`."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise SdlError(source, [f"{where}not YAML: {getattr(e, 'problem', e)}"]) from None
    if not isinstance(doc, dict):
        raise SdlError(source, ["the document is not a mapping of version, services, profiles, deployment"])
    problems = list(_structure(doc))
    if problems:
        raise SdlError(source, problems)
    return doc


def _structure(doc: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key in doc:
        if key not in _TOP_LEVEL:
            out.append(f"{key}: unknown top-level field (expected one of {', '.join(_TOP_LEVEL)})")
    version = doc.get("version")
    if version is None:
        out.append("version: missing (expected \"2.0\" or \"2.1\")")
    elif str(version) not in SUPPORTED_VERSIONS:
        out.append(f"version: {version!r} is not supported (expected \"2.0\" or \"2.1\")")
    for name in ("services", "deployment"):
        if not isinstance(doc.get(name), dict) or not doc.get(name):
            out.append(f"{name}: missing or empty (expected a mapping)")
    profiles = doc.get("profiles")
    if not isinstance(profiles, dict):
        out.append("profiles: missing (expected compute and placement)")
    else:
        for name in ("compute", "placement"):
            if not isinstance(profiles.get(name), dict):
                out.append(f"profiles.{name}: missing (expected a mapping)")
    for sname, svc in (doc.get("services") or {}).items() if isinstance(doc.get("services"), dict) else ():
        path = f"services.{sname}"
        if not isinstance(svc, dict):
            out.append(f"{path}: expected a mapping")
            continue
        if not isinstance(svc.get("image"), str) or not svc.get("image"):
            out.append(f"{path}.image: missing (expected an image reference)")
        for key in svc:
            if key not in _SERVICE_KEYS:
                out.append(f"{path}.{key}: unknown field (expected one of {', '.join(_SERVICE_KEYS)})")
        for key in ("command", "args", "env"):
            value = svc.get(key)
            if value is not None and not (isinstance(value, list) and all(isinstance(v, (str, int, float))
                                                                        for v in value)):
                out.append(f"{path}.{key}: expected a list of strings")
    deployment = doc.get("deployment")
    for sname, groups in deployment.items() if isinstance(deployment, dict) else ():
        if not isinstance(groups, dict):
            out.append(f"deployment.{sname}: expected a mapping of placement → profile and count")
            continue
        for pname, entry in groups.items():
            path = f"deployment.{sname}.{pname}"
            if not isinstance(entry, dict) or "profile" not in entry or "count" not in entry:
                out.append(f"{path}: expected profile and count")
            elif not isinstance(entry["count"], int) or entry["count"] < 1:
                out.append(f"{path}.count: expected a whole number >= 1, found {entry['count']!r}")
    return out


# --------------------------------------------------------------------------- units


def parse_cpu(value: Any) -> Decimal:
    """CPU units as cores: ``0.5``, ``"100m"`` (millicores) or ``2``."""
    m = _CPU_RE.match(str(value))
    if m is None:
        raise ValueError(f"{value!r} is not a CPU quantity (expected cores like 0.5 or millicores like 100m)")
    n = Decimal(m.group(1))
    return n / 1000 if m.group(2) else n


def parse_size(value: Any) -> int:
    """A size in bytes: ``512Mi``, ``1Gi``, ``1G``, ``1024`` (bytes)."""
    m = _SIZE_RE.match(str(value))
    if m is None:
        raise ValueError(f"{value!r} is not a size (expected a number with k, Ki, M, Mi, G, Gi, T, Ti, ...)")
    suffix = m.group(2) or ""
    if suffix == "K":
        suffix = "k"
    try:
        return int(Decimal(m.group(1)) * _SIZE_SUFFIXES[suffix])
    except (KeyError, InvalidOperation):
        raise ValueError(f"{value!r} is not a size") from None


# --------------------------------------------------------------------------- translating


def translate_file(path: str | Path, conversion: Conversion | None = None, *, strict: bool = False) -> Translation:
    """:func:`translate` of an SDL file; raises :class:`SdlError` when it cannot be read."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SdlError(str(p), [f"cannot read: {e.strerror or e}"]) from None
    return translate(load_sdl(text, str(p)), str(p), conversion, strict=strict)


def translate(doc: dict[str, Any], source: str = "<sdl>", conversion: Conversion | None = None, *,
              strict: bool = False) -> Translation:
    """What a (checked) SDL document becomes; see the module docstring."""
    tr = Translation(source, str(doc["version"]), conversion=conversion or Conversion())
    services: dict[str, Any] = doc["services"]
    compute: dict[str, Any] = doc["profiles"]["compute"]
    placements: dict[str, Any] = doc["profiles"]["placement"]
    for name in doc.get("endpoints") or {}:
        tr.refuse(f"endpoints.{name}", "an IP lease endpoint has no batch meaning: a grid job serves no address")
    if doc.get("reclamation"):
        tr.note("reclamation", None, "dropped: a provider's reclamation window has no meaning for a batch job, "
                "whose escrow is settled on chain")
    if doc.get("include"):
        tr.refuse("include", "included files are not read: give the SDL as one file")
    linked = _interdependent(services)
    for sname, groups in doc["deployment"].items():
        svc = services.get(sname)
        if svc is None:
            tr.refuse(f"deployment.{sname}", f"no service named {sname}")
            continue
        if sname in linked:
            tr.refuse(f"services.{sname}", f"depends on or is reached by {linked[sname]}: the grid has no network "
                      "between jobs (several interdependent services have no batch meaning)")
            continue
        for pname, entry in groups.items():
            _translate_group(tr, sname, svc, pname, entry, compute, placements, strict)
    return tr


def _interdependent(services: dict[str, Any]) -> dict[str, str]:
    """Services linked to others (by ``dependencies`` or an expose to another service), with whom."""
    links: dict[str, set[str]] = {}
    for sname, svc in services.items():
        others = {str(d.get("service")) for d in svc.get("dependencies") or [] if isinstance(d, dict)}
        for exp in svc.get("expose") or []:
            for to in (exp or {}).get("to") or []:
                if isinstance(to, dict) and to.get("service"):
                    others.add(str(to["service"]))
        for other in others - {sname}:
            links.setdefault(sname, set()).add(other)
            links.setdefault(other, set()).add(sname)
    return {s: ", ".join(sorted(o)) for s, o in links.items()}


def _translate_group(tr: Translation, sname: str, svc: dict[str, Any], pname: str, entry: dict[str, Any],
                     compute: dict[str, Any], placements: dict[str, Any], strict: bool) -> None:
    spath = f"services.{sname}"
    refused_before = len(tr.refused)
    for i, exp in enumerate(svc.get("expose") or []):
        port = (exp or {}).get("port")
        glob = any(isinstance(t, dict) and t.get("global") for t in (exp or {}).get("to") or [])
        what = "a global endpoint" if glob else "an exposed port"
        tr.refuse(f"{spath}.expose[{i}]", f"port {port} is {what}: a batch job serves no traffic")
    command = [str(c) for c in svc.get("command") or []] + [str(a) for a in svc.get("args") or []]
    if not command:
        tr.refuse(f"{spath}.command", "no command: a grid job runs an explicit command (the image's own "
                  "entrypoint is not known before the image is pulled)")
    profile_name = str(entry["profile"])
    profile = compute.get(profile_name)
    cpath = f"profiles.compute.{profile_name}"
    if profile is None:
        tr.refuse(cpath, f"deployment.{sname}.{pname} names compute profile {profile_name}, which does not exist")
        return
    placement = placements.get(pname)
    ppath = f"profiles.placement.{pname}"
    if placement is None:
        tr.refuse(ppath, f"deployment.{sname}.{pname} names placement {pname}, which does not exist")
        return
    resources, labels = _resources(tr, cpath, profile.get("resources") or {}, svc, spath)
    labels += _placement_labels(tr, ppath, placement, strict)
    max_rate = _price(tr, f"{ppath}.pricing.{profile_name}", (placement.get("pricing") or {}).get(profile_name))
    if len(tr.refused) > refused_before or resources is None or max_rate is None:
        return
    step: dict[str, Any] = {"name": sname, "run": {"container": {"image": svc["image"]},
                                                   "command": shlex.join(command)}}
    tr.note(f"{spath}.image", f"run.container.image {svc['image']}")
    tr.note(f"{spath}.command+args", f"run.command {shlex.join(command)!r}")
    creds = svc.get("credentials")
    if isinstance(creds, dict):
        step["run"]["container"].update({"registry": creds.get("host"), "username": creds.get("username"),
                                         "password": creds.get("password")})
        tr.note(f"{spath}.credentials", "run.container registry/username/password (secrets)")
    env = [_env_pair(str(e)) for e in svc.get("env") or []]
    if env:
        tr.note(f"{spath}.env", f"env ({len(env)} variables)")
    params = (svc.get("params") or {}).get("storage") or {}
    for vol, spec in params.items():
        mount = (spec or {}).get("mount")
        tr.note(f"{spath}.params.storage.{vol}", f"persistent volume at {mount}" if mount else "persistent volume",
                "the provider's persistent storage; the job sees it under $STORAGE_PATH")
    count = int(entry["count"])
    tr.note(f"deployment.{sname}.{pname}.count", f"job array of {count}" if count > 1 else "one job",
            "each Akash replica becomes its own grid job" if count > 1 else "")
    workflow: dict[str, Any] = {"name": f"akash-{sname}", "resources": resources, "steps": [step]}
    if env:
        workflow["env"] = env
    if labels:
        workflow["labels"] = labels
    tr.jobs.append(TranslatedJob(sname, pname, workflow, max_rate, count))


def _env_pair(text: str) -> dict[str, str]:
    key, _, value = text.partition("=")
    return {"key": key, "value": value}


def _resources(tr: Translation, cpath: str, res: dict[str, Any], svc: dict[str, Any],
               spath: str) -> tuple[dict[str, Any] | None, list[str]]:
    labels: list[str] = []
    ok = True
    try:
        cores = parse_cpu((res.get("cpu") or {}).get("units"))
        cpus = max(1, math.ceil(cores))
        tr.note(f"{cpath}.resources.cpu.units", f"cpusPerTask {cpus}",
                "" if cores == cpus else f"{cores} cores rounded up to whole cores")
    except ValueError as e:
        tr.refuse(f"{cpath}.resources.cpu.units", str(e))
        ok, cpus = False, 1
    try:
        mem_bytes = parse_size((res.get("memory") or {}).get("size"))
        mem_per_cpu = max(1, math.ceil(mem_bytes / 2**20 / cpus))
        tr.note(f"{cpath}.resources.memory.size", f"memPerCpu {mem_per_cpu} MiB",
                f"{mem_bytes / 2**20:g} MiB over {cpus} core(s), rounded up")
    except ValueError as e:
        tr.refuse(f"{cpath}.resources.memory.size", str(e))
        ok, mem_per_cpu = False, 1
    gpus = 0
    gpu = res.get("gpu") or {}
    if gpu:
        try:
            gpus = int(str(gpu.get("units", 0)))
            if gpus < 0:
                raise ValueError
        except ValueError:
            tr.refuse(f"{cpath}.resources.gpu.units", f"{gpu.get('units')!r} is not a whole number of GPUs")
            ok = False
        tr.note(f"{cpath}.resources.gpu.units", f"gpus {gpus}")
        vendors = ((gpu.get("attributes") or {}).get("vendor") or {})
        for vendor, models in vendors.items():
            labels.append(f"gpu.vendor == {vendor}")
            names = sorted({str(m["model"]) for m in models or [] if isinstance(m, dict) and m.get("model")})
            if names:
                labels.append(f"gpu.model in {','.join(names)}" if len(names) > 1 else f"gpu.model == {names[0]}")
            tr.note(f"{cpath}.resources.gpu.attributes.vendor.{vendor}", "label constraints " + " and ".join(
                labels[-2:] if names else labels[-1:]))
    storage = res.get("storage")
    volumes = storage if isinstance(storage, list) else [storage] if isinstance(storage, dict) else []
    for i, vol in enumerate(volumes):
        vpath = f"{cpath}.resources.storage[{i}]"
        try:
            gb = max(1, math.ceil(parse_size(vol.get("size")) / 10**9))
        except ValueError as e:
            tr.refuse(vpath, str(e))
            ok = False
            continue
        persistent = bool((vol.get("attributes") or {}).get("persistent"))
        key = "storage.persistent.gb" if persistent else "storage.ephemeral.gb"
        labels.append(f"{key} >= {gb}")
        tr.note(vpath, f"label constraint {key} >= {gb}",
                "persistent volume: a provider resource" if persistent else "ephemeral scratch disk")
    if not ok:
        return None, labels
    return {"tasks": 1, "cpusPerTask": cpus, "memPerCpu": mem_per_cpu, "gpus": gpus}, labels


def _placement_labels(tr: Translation, ppath: str, placement: dict[str, Any], strict: bool) -> list[str]:
    labels: list[str] = []
    for key, value in (placement.get("attributes") or {}).items():
        labels.append(f"{key} == {value}")
        tr.note(f"{ppath}.attributes.{key}", f"label constraint {key} == {value}")
    signed = placement.get("signedBy")
    if signed:
        if strict:
            tr.refuse(f"{ppath}.signedBy", "auditor signatures have no grid equivalent (strict mode)")
        else:
            tr.note(f"{ppath}.signedBy", None, "dropped: Akash auditor signatures have no grid equivalent; the "
                    "grid's admin approval of providers plays that role")
    return labels


def _price(tr: Translation, path: str, pricing: Any) -> int | None:
    if not isinstance(pricing, dict):
        tr.refuse(path, "no pricing for this profile (expected denom and amount)")
        return None
    denom = str(pricing.get("denom"))
    try:
        amount = Decimal(str(pricing.get("amount")))
    except InvalidOperation:
        tr.refuse(f"{path}.amount", f"{pricing.get('amount')!r} is not a number")
        return None
    if denom not in tr.conversion.units_per_denom:
        known = ", ".join(sorted(tr.conversion.units_per_denom))
        tr.refuse(f"{path}.denom", f"no conversion for {denom} (known: {known}; give one with --rate {denom}=N)")
        return None
    cap = tr.conversion.cap_per_minute(denom, amount)
    if cap <= 0:
        tr.refuse(path, f"{amount} {denom} per block is a price cap of 0 credit units per minute")
        return None
    tr.note(path, f"price cap {cap} credit units/min", f"{amount} {denom}/block at {tr.conversion.describe()}")
    return cap
