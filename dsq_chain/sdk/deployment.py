"""Deploy the whole stack with one call, and read/write the deployment file services use to find it."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_utils.address import to_checksum_address
from web3.contract import Contract

from dsq_chain import artifacts
from dsq_chain.errors import InputError, TransactionFailed
from dsq_chain.sdk.chain import Chain, Wallet

#: Default seconds a provider has to claim an assignment.
DEFAULT_CLAIM_TIMEOUT = 300


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the contracts live: addresses, chain id, the block they were deployed in, and the RPC URL."""

    chain_id: int
    token: str
    market: str
    block: int
    admin: str
    rpc_url: str = ""

    def save(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, p)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Deployment:
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except FileNotFoundError:
            raise InputError(f"deployment file {p} not found: run `dsq devnet up` or pass --deployment") from None
        except json.JSONDecodeError as e:
            raise InputError(f"deployment file {p} is not JSON: {e}") from None
        try:
            return cls(
                chain_id=int(data["chain_id"]),
                token=to_checksum_address(data["token"]),
                market=to_checksum_address(data["market"]),
                block=int(data["block"]),
                admin=to_checksum_address(data["admin"]),
                rpc_url=str(data.get("rpc_url", "")),
            )
        except (KeyError, ValueError, TypeError) as e:
            raise InputError(f"deployment file {p} lacks or mangles field {e}") from None

    def contracts(self, chain: Chain) -> tuple[Contract, Contract]:
        """Web3 contract objects (token, market) bound to ``chain``; checks the chain id."""
        if chain.chain_id != self.chain_id:
            raise InputError(f"chain id {chain.chain_id} at {chain.rpc_url} != deployment's {self.chain_id}")
        token = chain.w3.eth.contract(address=self.token, abi=artifacts.abi("CreditToken"))  # type: ignore[call-overload]
        market = chain.w3.eth.contract(address=self.market, abi=artifacts.abi("JobMarket"))  # type: ignore[call-overload]
        return token, market


def _deploy(wallet: Wallet, name: str, *args: object) -> tuple[str, int]:
    w3 = wallet.chain.w3
    factory = w3.eth.contract(abi=artifacts.abi(name), bytecode=artifacts.bytecode(name))  # type: ignore[call-overload]
    receipt = wallet.transact(factory.constructor(*args))
    address = receipt["contractAddress"]
    if address is None:
        raise TransactionFailed(f"deploying {name} created no contract")
    return to_checksum_address(address), int(receipt["blockNumber"])


def deploy(wallet: Wallet, *, claim_timeout: int = DEFAULT_CLAIM_TIMEOUT) -> Deployment:
    """Deploys CreditToken and JobMarket with ``wallet`` as admin (and minter)."""
    token, block = _deploy(wallet, "CreditToken", wallet.address)
    market, _ = _deploy(wallet, "JobMarket", token, wallet.address, claim_timeout)
    return Deployment(
        chain_id=wallet.chain.chain_id, token=token, market=market, block=block,
        admin=wallet.address, rpc_url=wallet.chain.rpc_url,
    )
