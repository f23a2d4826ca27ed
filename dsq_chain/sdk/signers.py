"""Who signs: any eth-account key, a keystore file, a remote signer, an ape account, or nobody.

A :class:`Signer` is the small protocol the SDK signs through: an address, a way to sign a
transaction (a dict of EIP-1559 or legacy fields, returning the raw signed bytes) and a way to
sign EIP-712 typed data (permits). :func:`as_signer` turns what users have into one:

- a private key (hex text or bytes), or an eth-account ``LocalAccount``;
- :func:`from_keystore` — an encrypted eth-account keystore file and its password;
- any object that already follows the protocol (a remote signer: an HSM, a KMS, a wallet server);
- :class:`ApeSigner` — an account of eth-ape (a test account, or a keyfile account: ``accounts.load("alias")``).

:data:`READ_ONLY` signs nothing: clients built on it read the chain and raise
:class:`~dsq_chain.errors.InputError` naming what to pass when asked to send.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol, runtime_checkable

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from dsq_chain.errors import InputError

#: The address a read-only client reads as (``eth_call`` from nobody).
ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"


@runtime_checkable
class Signer(Protocol):
    """What the SDK needs to act for an account."""

    @property
    def address(self) -> str:
        """The checksummed address of the account."""
        ...

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        """The raw signed transaction for ``tx`` (fields as web3 names them: nonce, gas, to, data, ...)."""
        ...

    def sign_typed_data(self, typed: dict[str, Any]) -> tuple[int, bytes, bytes]:
        """An EIP-712 signature of ``typed`` (the full message: types, primaryType, domain, message) as
        (v, r, s)."""
        ...


class LocalSigner:
    """A key held in this process (an eth-account ``LocalAccount``)."""

    def __init__(self, account: LocalAccount) -> None:
        self.account = account

    @property
    def address(self) -> str:
        """The key's address."""
        return str(self.account.address)

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        """The raw signed transaction."""
        return bytes(self.account.sign_transaction(tx).raw_transaction)

    def sign_typed_data(self, typed: dict[str, Any]) -> tuple[int, bytes, bytes]:
        """(v, r, s) of the EIP-712 message."""
        signed = self.account.sign_message(encode_typed_data(full_message=typed))
        return (int(signed.v), signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big"))

    def __repr__(self) -> str:  # never shows the key
        return f"LocalSigner({self.address})"


class ReadOnlySigner:
    """No key: reads only. Every signing attempt raises :class:`~dsq_chain.errors.InputError`."""

    address = ZERO_ADDRESS

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        raise InputError("this client is read-only: connect with a key, a keystore or a signer to send transactions")

    def sign_typed_data(self, typed: dict[str, Any]) -> tuple[int, bytes, bytes]:
        raise InputError("this client is read-only: connect with a key, a keystore or a signer to sign permits")

    def __repr__(self) -> str:
        return "ReadOnlySigner()"


#: The signer of read-only clients.
READ_ONLY = ReadOnlySigner()


class ApeSigner:
    """An eth-ape account (a test account in ``ape test``, ``accounts.load("alias")``) as a signer.

    Transactions are built by the SDK and signed by ape's account (which may prompt for its password);
    ape itself sends nothing, so receipts and reverts behave as with any other signer."""

    def __init__(self, account: Any) -> None:
        self.account = account

    @property
    def address(self) -> str:
        """The ape account's address, checksummed."""
        return to_checksum_address(str(self.account.address))

    def sign_transaction(self, tx: dict[str, Any]) -> bytes:
        """The raw transaction signed by the ape account. Raises InputError if the account declines."""
        from ape import networks  # the ape extra: only where an ape account exists

        fields = {k: v for k, v in tx.items() if k != "from" and not (k == "to" and not v)}  # deployments: no "to"
        fields["sender"] = self.address  # ape checks the recovered signer against the sender
        if "maxFeePerGas" in fields:
            fields["type"] = 2
        txn = networks.ethereum.create_transaction(**fields)
        signed = self.account.sign_transaction(txn)
        if signed is None or signed.signature is None:
            raise InputError(f"ape account {self.address} declined to sign the transaction")
        return bytes(signed.serialize_transaction())

    def sign_typed_data(self, typed: dict[str, Any]) -> tuple[int, bytes, bytes]:
        """(v, r, s) of the EIP-712 message, signed by the ape account. Raises InputError if it declines."""
        sig = self.account.sign_message(encode_typed_data(full_message=typed))
        if sig is None:
            raise InputError(f"ape account {self.address} declined to sign the permit")
        return (int(sig.v), bytes(sig.r).rjust(32, b"\0"), bytes(sig.s).rjust(32, b"\0"))

    def __repr__(self) -> str:
        return f"ApeSigner({self.address})"


def from_key(private_key: str | bytes) -> LocalSigner:
    """A signer for a raw private key (32 bytes, or their hex). Raises InputError for anything else."""
    try:
        return LocalSigner(Account.from_key(private_key))
    except (ValueError, TypeError):
        raise InputError("not a valid private key (expected 32 bytes, or their hex)") from None


def from_keystore(path: str | os.PathLike[str], password: str) -> LocalSigner:
    """A signer for an encrypted eth-account keystore file. Raises InputError naming the file on a
    missing or malformed file or a wrong password."""
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise InputError(f"keystore {os.fspath(path)} not found") from None
    except json.JSONDecodeError:
        raise InputError(f"keystore {os.fspath(path)} is not JSON") from None
    try:
        return LocalSigner(Account.from_key(Account.decrypt(data, password)))
    except ValueError:
        raise InputError(f"wrong password for keystore {os.fspath(path)}") from None


#: What :func:`as_signer` accepts.
SignerLike = str | bytes | LocalAccount | Signer


def as_signer(who: SignerLike | None) -> Signer:
    """A :class:`Signer` for a key, a LocalAccount, a Signer (returned as is) or None (read-only).

    An ape account is recognised by its class's module and wrapped in :class:`ApeSigner`."""
    if who is None:
        return READ_ONLY
    if isinstance(who, (str, bytes)):
        return from_key(who)
    if isinstance(who, LocalAccount):
        return LocalSigner(who)
    if type(who).__module__.split(".")[0] in ("ape", "ape_test", "ape_accounts", "ape_foundry"):
        return ApeSigner(who)
    if isinstance(who, Signer):
        return who
    raise InputError(
        f"cannot sign with a {type(who).__name__}: pass a private key, a LocalAccount, "
        "dsq_chain.sdk.signers.from_keystore(path, password), an ape account, or an object with "
        "address, sign_transaction(tx) and sign_typed_data(typed)"
    )


__all__ = [
    "READ_ONLY",
    "ApeSigner",
    "LocalSigner",
    "ReadOnlySigner",
    "Signer",
    "SignerLike",
    "as_signer",
    "from_key",
    "from_keystore",
]
