"""What every ``dsq`` command shares: settings resolution, keys, amounts, output and error handling.

Settings come from flags, then environment variables, then a config file, in that order:

==================  =========================  ========================  ===========================
setting             flag                       environment               config file key
==================  =========================  ========================  ===========================
RPC URL             ``--rpc-url``              ``DSQ_RPC_URL``           ``rpc_url``
deployment file     ``--deployment``           ``DSQ_DEPLOYMENT``        ``deployment``
private key         (never a flag)             ``DSQ_PRIVATE_KEY``       (never in a file)
keystore file       ``--keystore``             ``DSQ_KEYSTORE``          ``keystore``
keystore password   (prompted)                 ``DSQ_KEYSTORE_PASSWORD`` (never in the config)
==================  =========================  ========================  ===========================

The config file is ``--config``, ``$DSQ_CONFIG`` or ``./.dsq/config.json``. The deployment file
defaults to ``./.dsq/deployment.json`` (what ``dsq devnet up`` writes); the RPC URL defaults to
the one recorded in it. Keys are never printed.

Exit codes: 0 success; 1 the job ended badly (``watch``); 2 bad input or usage; 3 the RPC node is
unreachable; 4 the contract refused (a named custom error); 5 timed out waiting; 6 the execution engine
failed (a Slurm command, e.g. the controller does not answer).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from eth_account import Account
from rich.console import Console
from rich.table import Table

from dsq_chain.errors import ChainUnavailable, ContractError, DsqError, InputError, TransactionFailed
from dsq_chain.executors.base import ExecutorError
from dsq_chain.money import Credits
from dsq_chain.sdk.chain import TRANSPORT_ERRORS, Chain, Wallet
from dsq_chain.sdk.deployment import Deployment
from dsq_chain.services.onboarding import decrypt_keystore, read_keystore

EXIT_JOB_FAILED = 1
EXIT_INPUT = 2
EXIT_CHAIN = 3
EXIT_CONTRACT = 4
EXIT_TIMEOUT = 5
EXIT_ENGINE = 6

DEFAULT_DIR = Path(".dsq")
out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)

T = TypeVar("T")


@dataclass
class Settings:
    rpc_url: str | None = None
    deployment: Path | None = None
    keystore: Path | None = None
    config: Path | None = None
    json: bool = False
    #: A file whose first line is the keystore's password (``dsq deploy --password-file``).
    password_file: Path | None = None

    def config_file(self) -> dict[str, Any]:
        path = self.config or (Path(os.environ["DSQ_CONFIG"]) if os.environ.get("DSQ_CONFIG") else None)
        path = path or DEFAULT_DIR / "config.json"
        if not path.exists():
            if self.config is not None:
                raise InputError(f"config file {path} not found")
            return {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise InputError(f"config file {path} is not JSON: {e}") from None
        if not isinstance(data, dict):
            raise InputError(f"config file {path} must hold a JSON object")
        return data

    def deployment_path(self) -> Path:
        if self.deployment:
            return self.deployment
        env = os.environ.get("DSQ_DEPLOYMENT")
        if env:
            return Path(env)
        cfg = self.config_file().get("deployment")
        return Path(cfg) if cfg else DEFAULT_DIR / "deployment.json"

    def load_deployment(self) -> Deployment:
        return Deployment.load(self.deployment_path())

    def rpc(self, deployment: Deployment | None = None) -> str:
        url = self.rpc_url or os.environ.get("DSQ_RPC_URL") or self.config_file().get("rpc_url")
        if not url and deployment is not None:
            url = deployment.rpc_url
        if not url:
            raise InputError("no RPC URL: pass --rpc-url, set DSQ_RPC_URL, or put rpc_url in the config file")
        return str(url)

    def chain(self) -> tuple[Chain, Deployment]:
        dep = self.load_deployment()
        return Chain(self.rpc(dep)), dep

    def wallet(self, chain: Chain) -> Wallet:
        return chain.wallet(self.private_key())

    def private_key(self) -> str:
        keystore = self.keystore or (Path(os.environ["DSQ_KEYSTORE"]) if os.environ.get("DSQ_KEYSTORE") else None)
        key = os.environ.get("DSQ_PRIVATE_KEY")
        if keystore is None and not key and self.config_file().get("keystore"):  # the environment beats the file
            keystore = Path(self.config_file()["keystore"])
        if keystore is not None:
            return _decrypt(keystore, self.password_file)
        if not key:
            raise InputError("no key: set DSQ_PRIVATE_KEY or pass --keystore FILE (an encrypted eth-account keystore)")
        try:
            Account.from_key(key)
        except (ValueError, TypeError):
            raise InputError("DSQ_PRIVATE_KEY is not a valid private key (expected 32 bytes of hex)") from None
        return key

    def read_only_wallet(self, chain: Chain) -> Wallet:
        """A throwaway key for commands that only read (nothing is ever sent with it)."""
        return chain.wallet(Account.create().key)


def _decrypt(path: Path, password_file: Path | None = None) -> str:
    data = read_keystore(path)
    if password_file is not None:
        try:
            lines = password_file.read_text().splitlines()
        except OSError as e:
            raise InputError(f"password file {password_file} cannot be read: {e.strerror or e}") from None
        password: str | None = lines[0] if lines else ""
    else:
        password = os.environ.get("DSQ_KEYSTORE_PASSWORD")
    if password is None:
        if not sys.stdin.isatty():
            raise InputError("keystore password needed: set DSQ_KEYSTORE_PASSWORD (no terminal to prompt on)")
        password = typer.prompt(f"password for {path}", hide_input=True)
    return decrypt_keystore(data, password, path)[1]


def settings(ctx: typer.Context) -> Settings:
    obj = ctx.find_root().obj
    assert isinstance(obj, Settings)
    return obj


# ---------------------------------------------------------------------------------- amounts
def parse_credits(text: str, what: str = "credits", *, allow_zero: bool = False) -> Credits:
    """A human amount of credits ("10", "2.5"): :meth:`Credits.parse`, the SDK's own rule."""
    return Credits.parse(text, what, allow_zero=allow_zero)


def fmt_credits(units: int | None) -> str:
    """An amount (Credits, or base units) as credits without trailing zeros; None as "-"."""
    return "-" if units is None else str(Credits(units=int(units)))


# ---------------------------------------------------------------------------------- output
def table(title: str | None, columns: list[str], rows: list[list[Any]]) -> Table:
    t = Table(title=title, show_lines=False)
    for c in columns:
        t.add_column(c)
    for r in rows:
        t.add_row(*[str(x) for x in r])
    return t


def emit(data: Any, render: Callable[[], Any], as_json: bool) -> None:
    """Prints ``data`` as JSON when asked, else what ``render`` returns (a rich renderable or str)."""
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    shown = render()
    if isinstance(shown, str):
        print(shown)  # plain text is never re-wrapped: scripts and tests read it line by line
    else:
        out.print(shown)


def fail(message: str, code: int = EXIT_INPUT) -> NoReturn:
    err.print(f"dsq: error: {message}")
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turns library errors into one line on stderr and a meaningful exit code."""
    try:
        yield
    except InputError as e:
        fail(str(e), EXIT_INPUT)
    except TimeoutError as e:  # (a subclass of OSError: must come first)
        fail(str(e), EXIT_TIMEOUT)
    except TRANSPORT_ERRORS as e:  # a link error the SDK did not wrap: the node's, not a file's (OSErrors too)
        fail(f"RPC node unreachable: {e.__class__.__name__} (is the node running? `dsq devnet up` starts a local "
             "one)", EXIT_CHAIN)
    except OSError as e:  # a workflow or key file that cannot be read
        fail(f"cannot read {getattr(e, 'filename', None) or 'a file'}: {e.strerror or e}", EXIT_INPUT)
    except ValueError as e:  # WorkflowError, LabelExpressionError, ... are ValueErrors with precise messages
        fail(str(e), EXIT_INPUT)
    except ChainUnavailable as e:
        fail(f"{e} (is the node running? `dsq devnet up` starts a local one)", EXIT_CHAIN)
    except ContractError as e:
        fail(f"the contract refused: {e}", EXIT_CONTRACT)
    except TransactionFailed as e:
        fail(str(e), EXIT_CONTRACT)
    except DsqError as e:
        fail(str(e), EXIT_INPUT)
    except ExecutorError as e:  # an engine command failed (a Slurm controller down, ...): one line, not a traceback
        fail(" ".join(str(e).split()), EXIT_ENGINE)
