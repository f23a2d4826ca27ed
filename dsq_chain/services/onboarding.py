"""Onboarding a provider: keystore, offer, idempotent registration, config file and systemd unit.

``dsq provider init`` is a thin wiring of these pieces:

* :func:`create_keystore` / :func:`import_keystore` write an encrypted eth-account keystore (mode 0600);
* :func:`propose_prices` reads the approved providers' prices on chain (their median, else defaults);
* :func:`plan_offer` turns a :class:`~dsq_chain.executors.hardware.HardwareReport` and the provider's
  choices into an :class:`Offer`, refusing anything the self-check did not measure;
* :func:`sync_registration` creates the on-chain record if it is missing and otherwise sends only what
  differs (hardware, prices, labels): run twice, the second run sends nothing;
* :func:`write_service_files` writes the config file, the environment file (0600: it holds the keystore
  password) and the systemd unit that runs ``dsq worker run``.
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from eth_account import Account

from dsq_chain.errors import InputError
from dsq_chain.executors.hardware import MEASURED_LABELS, HardwareReport, standard_labels, verify_offer
from dsq_chain.money import Credits
from dsq_chain.sdk.client import ProviderClient
from dsq_chain.types import Prices, Provider, ProviderStatus, Resources
from dsq_chain.workloads.labels import LabelExpressionError, decode_value, encode_key, parse_labels

__all__ = [
    "DEFAULT_PRICES",
    "Offer",
    "ServiceFiles",
    "chain_labels",
    "create_keystore",
    "decrypt_keystore",
    "import_keystore",
    "keep_close_measurements",
    "plan_offer",
    "plan_registration",
    "propose_prices",
    "read_keystore",
    "render_unit",
    "settle_offer",
    "sync_registration",
    "write_private",
    "write_service_files",
]

#: Prices proposed when no approved provider is on chain yet (credits per minute).
DEFAULT_PRICES = Prices(per_cpu_minute=Credits("0.001"), per_gpu_minute=Credits("0.05"),
                        per_gb_minute=Credits("0.0001"))


@dataclass(frozen=True)
class Offer:
    """What a provider registers: hardware, prices and labels (the self-check's plus its own)."""

    hardware: Resources
    prices: Prices
    labels: dict[str, str] = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ keys
def write_private(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` readable by its owner only (0600), never briefly readable by others."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def create_keystore(path: Path, password: str, private_key: str | None = None) -> str:
    """Encrypts ``private_key`` (a new random one when None) into ``path``; returns the address.

    Refuses to overwrite an existing file (a lost key is lost credits).
    """
    if path.exists():
        raise InputError(f"keystore {path} already exists: pass it with --keystore to reuse it, or choose another path")
    if not password:
        raise InputError("the keystore password must not be empty")
    try:
        account = Account.from_key(private_key) if private_key else Account.create()
    except (ValueError, TypeError):
        raise InputError("the key to import is not a private key (expected 32 bytes of hex)") from None
    write_private(path, json.dumps(Account.encrypt(account.key, password)))
    return str(account.address)


def read_keystore(path: Path) -> dict[str, object]:
    """The JSON of a keystore file, or a clear error naming the file."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"keystore {path} not found") from None
    except json.JSONDecodeError:
        raise InputError(f"keystore {path} is not JSON (expected an eth-account keystore)") from None
    if not isinstance(data, dict):
        raise InputError(f"keystore {path} is not an eth-account keystore (a JSON object)")
    return data


def decrypt_keystore(data: Mapping[str, object], password: str, path: Path) -> tuple[str, str]:
    """(address, private key) of keystore ``data`` read from ``path``; a clear error for a wrong password."""
    try:
        key = "0x" + bytes(Account.decrypt(dict(data), password)).hex()
    except (ValueError, KeyError, TypeError):
        raise InputError(f"wrong password for keystore {path}") from None
    return str(Account.from_key(key).address), key


def import_keystore(path: Path, password: str) -> tuple[str, str]:
    """(address, private key) of an existing keystore file."""
    return decrypt_keystore(read_keystore(path), password, path)


# ------------------------------------------------------------------------------------------ the offer
def propose_prices(providers: Sequence[Provider]) -> Prices:
    """The median prices of approved providers (so a newcomer is neither the cheapest nor ignored), else
    :data:`DEFAULT_PRICES`."""
    approved = [p.prices for p in providers if p.status is ProviderStatus.APPROVED]
    if not approved:
        return DEFAULT_PRICES
    return Prices.from_units(
        max(1, int(statistics.median(p.per_cpu_minute for p in approved))),
        int(statistics.median(p.per_gpu_minute for p in approved)),
        int(statistics.median(p.per_gb_minute for p in approved)),
    )


def plan_offer(report: HardwareReport, prices: Prices, *, region: str | None = None,
               extra_labels: Mapping[str, str] | None = None, hardware: Resources | None = None) -> Offer:
    """The offer for ``report``: all measured hardware (or ``hardware``, which must fit in it), the
    self-check's labels and ``extra_labels``; raises :class:`InputError` naming every over-claim."""
    hw = hardware or report.capacity
    labels = standard_labels(report, region)
    extra = parse_labels(dict(extra_labels or {}))
    problems = verify_offer(hw, extra, report)
    if problems:
        raise InputError("refusing to offer more than the self-check measured: " + "; ".join(problems))
    labels.update(extra)
    if prices.per_cpu_minute <= 0:
        raise InputError("the cpu price must be positive (credits per cpu-minute)")
    return Offer(hw, prices, labels)


# ------------------------------------------------------------------------------------------ registration
def plan_registration(current: Provider | None, labels: Mapping[str, str], offer: Offer) -> list[str]:
    """What must be sent so that the chain holds ``offer``, given the record ``current`` and its ``labels``:
    ``["register"]`` for a missing record, else the parts that differ among ``hardware``, ``prices`` and
    ``labels`` (empty: nothing to do)."""
    if current is None or current.status in (ProviderStatus.NONE, ProviderStatus.REMOVED):
        return ["register"]
    todo = []
    if current.total != offer.hardware:
        todo.append("hardware")
    if current.prices != offer.prices:
        todo.append("prices")
    if dict(labels) != dict(offer.labels):
        todo.append("labels")
    return todo


#: Free disk within this fraction (or one GB, the figure's resolution) of the figure on chain keeps the one on
#: chain, either way: free disk moves with whatever else writes to the machine (41 GB, then 39 GB, is no change).
DISK_TOLERANCE = 0.10


def keep_close_measurements(offer: Offer, on_chain: Mapping[str, str], *, remeasure: bool = False) -> Offer:
    """``offer`` with measured figures that moved only by noise replaced by the ones already on chain, so that
    running ``init`` again sends nothing when nothing really changed.

    Benchmark figures (``bench.*``) stay as published while ``cpu.model`` is the same: one run of the
    self-check differs from the next by up to 14x on a busy machine (fsync'd writes, memory copy), so a
    tolerance band would republish noise. Free disk (``storage.*``) stays within :data:`DISK_TOLERANCE`.
    ``remeasure`` publishes every fresh figure.
    """
    if remeasure:
        return offer
    labels = dict(offer.labels)
    same_cpu = on_chain.get("cpu.model") == offer.labels.get("cpu.model")
    for key, new in offer.labels.items():
        old = on_chain.get(key)
        if old is None or not (old.isdigit() and new.isdigit()) or old == new:
            continue
        o, n = int(old), int(new)
        if (key.startswith("bench.") and same_cpu) or (
                key.startswith("storage.") and abs(o - n) <= max(1, DISK_TOLERANCE * n)):
            labels[key] = old
    return Offer(offer.hardware, offer.prices, labels)


def chain_labels(client: ProviderClient, extra_keys: Sequence[str] = ()) -> dict[str, str]:
    """The labels the chain holds for ``client``'s account: every key it ever set (from its
    ``ProviderLabelsSet`` events) plus ``extra_keys``, read back with ``labelOf``."""
    keys = set(extra_keys) | set(MEASURED_LABELS) | {"region"}
    logs = client.market.events.ProviderLabelsSet().get_logs(
        from_block=client.deployment.block, argument_filters={"provider": client.address})
    for log in logs:
        keys.update(str(k) for k in log["args"]["keys"])
    found = {}
    for key in sorted(keys):
        try:
            raw = client.market.functions.labelOf(client.address, encode_key(key)).call()
        except LabelExpressionError:
            continue  # a key no valid label has (set by hand with a raw transaction): not ours to judge
        if bytes(raw) != bytes(32):
            found[key] = decode_value(bytes(raw))
    return found


def settle_offer(client: ProviderClient, offer: Offer, *, remeasure: bool = False) -> tuple[Offer, dict[str, str]]:
    """``offer`` as :func:`sync_registration` will send it (measurement noise against the chain's figures
    removed), and the labels the chain holds now (none for a provider not registered)."""
    if client.info().status in (ProviderStatus.NONE, ProviderStatus.REMOVED):
        return offer, {}
    on_chain = chain_labels(client, list(offer.labels))
    return keep_close_measurements(offer, on_chain, remeasure=remeasure), on_chain


def sync_registration(client: ProviderClient, offer: Offer, *, remeasure: bool = False) -> list[str]:
    """Makes the chain hold ``offer`` for ``client``'s account, sending only what differs; returns what it sent.

    A banned provider is refused here (the contract would refuse too, after gas).
    """
    current = client.info()
    if current.status is ProviderStatus.BANNED:
        raise InputError(f"{client.address} is banned: the admin must lift the ban before it can offer anything")
    labels = chain_labels(client, list(offer.labels)) if current.status is not ProviderStatus.NONE else {}
    offer = keep_close_measurements(offer, labels, remeasure=remeasure)
    todo = plan_registration(current, labels, offer)
    if todo == ["register"]:
        client.register(offer.hardware, offer.prices, offer.labels)
        return todo
    if "hardware" in todo:
        client.update_hardware(offer.hardware)
    if "prices" in todo:
        client.update_prices(offer.prices)
    if "labels" in todo:
        changed = {k: v for k, v in offer.labels.items() if labels.get(k) != v}
        removed = [k for k in labels if k not in offer.labels]
        client.set_labels(changed, removed)
    return todo


# ------------------------------------------------------------------------------------------ service files
@dataclass(frozen=True)
class ServiceFiles:
    """Where :func:`write_service_files` put things."""

    config: Path
    env_file: Path
    unit: Path


def dsq_command() -> list[str]:
    """How to run ``dsq`` from a unit: this Python with ``-m dsq_chain`` (no PATH lookup at boot)."""
    return [sys.executable, "-m", "dsq_chain"]


def render_unit(*, address: str, config: Path, env_file: Path, worker_args: Sequence[str], state_dir: Path,
                user: str | None = None) -> str:
    """A systemd service unit running ``dsq worker run`` for ``address``, restarted on failure."""
    cmd = [*dsq_command(), "--config", str(config), "worker", "run", *worker_args]
    lines = [
        "# Generated by `dsq provider init` (docs/provider-guide.md); run it again rather than editing this file.",
        "[Unit]",
        f"Description=dsq-chain provider worker {address}",
        "After=network-online.target",
        "Wants=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"EnvironmentFile={env_file}",
        f"WorkingDirectory={state_dir}",
        "ExecStart=" + " ".join(_systemd_quote(a) for a in cmd),
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStopSec=30",
        "KillMode=mixed",
    ]
    if user:
        lines.append(f"User={user}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _systemd_quote(arg: str) -> str:
    if arg and all(c.isalnum() or c in "/._-=:,@+" for c in arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_service_files(directory: Path, *, address: str, config: Mapping[str, object], env: Mapping[str, str],
                        worker_args: Sequence[str], state_dir: Path, user: str | None = None) -> ServiceFiles:
    """Writes ``config.json``, ``worker.env`` (0600) and ``dsq-worker.service`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    files = ServiceFiles(directory / "config.json", directory / "worker.env", directory / "dsq-worker.service")
    files.config.write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n")
    write_private(files.env_file, "".join(f"{k}={_env_quote(v)}\n" for k, v in env.items()))
    files.unit.write_text(render_unit(address=address, config=files.config.resolve(), env_file=files.env_file.resolve(),
                                      worker_args=worker_args, state_dir=state_dir.resolve(), user=user))
    return files


def _env_quote(value: str) -> str:
    """A value for a systemd EnvironmentFile line (double-quoted when it needs it)."""
    if "\n" in value or "\0" in value:
        raise InputError("environment values for the unit must be one line")
    if value and all(c.isalnum() or c in "/._-:,@+" for c in value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def read_env_file(path: Path) -> dict[str, str]:
    """The variables of an environment file written by :func:`write_service_files`."""
    env = {}
    for line in path.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, _, value = line.partition("=")
        parts = shlex.split(value) if value else [""]
        env[key.strip()] = parts[0] if parts else ""
    return env
