"""Deploy the whole stack with one call, and read/write the deployment file services use to find it."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from eth_utils.address import to_checksum_address
from web3.contract import Contract

from dsq_chain import artifacts
from dsq_chain.errors import InputError, TransactionFailed
from dsq_chain.sdk.chain import Chain, Wallet

#: Default seconds a provider has to claim an assignment.
DEFAULT_CLAIM_TIMEOUT = 300
#: Default seconds between scheduling a delayed admin action (approving a provider, granting or revoking
#: a role, changing the claim timeout) and running it. 0 on a devnet (actions run at once); give a real
#: network a delay watchdogs can act in, e.g. ``deploy(wallet, admin_delay=2 * 86400)``.
DEFAULT_ADMIN_DELAY = 0
#: EIP-170: the most bytes of code one contract may hold.
CODE_SIZE_LIMIT = 24_576


@dataclass(frozen=True, slots=True)
class Deployment:
    """Where the contracts live: addresses, chain id, the block they were deployed in, and the RPC URL."""

    chain_id: int
    token: str
    market: str
    block: int
    admin: str
    rpc_url: str = ""
    #: The ProviderRegistry whose code the market runs (callers use the market's address only).
    registry: str = ""

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
                registry=to_checksum_address(data["registry"]) if data.get("registry") else "",
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


#: The contracts of one deployment, in the order they are deployed (each may need the earlier ones' addresses).
CONTRACTS = ("CreditToken", "ProviderRegistry", "JobMarket")


def check_parameters(claim_timeout: int, admin_delay: int) -> None:
    """Raises InputError unless both fit the contracts' 64-bit seconds."""
    if not 0 <= admin_delay < 2**64 or not 0 <= claim_timeout < 2**64:
        raise InputError(f"claim timeout and admin delay are 0..2**64-1 seconds, got {claim_timeout}, {admin_delay}")


def constructor_args(
    contract: str, addresses: Mapping[str, str], *, admin: str, claim_timeout: int, admin_delay: int
) -> tuple[object, ...]:
    """The constructor arguments of ``contract`` (one of :data:`CONTRACTS`), given the addresses of the
    contracts deployed before it."""
    if contract == "CreditToken":
        return (admin,)
    if contract == "ProviderRegistry":
        return ()
    if contract == "JobMarket":
        return (addresses["CreditToken"], admin, claim_timeout, admin_delay, addresses["ProviderRegistry"])
    raise InputError(f"{contract} is not one of the deployment's contracts {CONTRACTS}")


def assemble(addresses: Mapping[str, str], *, chain_id: int, block: int, admin: str, rpc_url: str) -> Deployment:
    """The :class:`Deployment` of the contracts at ``addresses`` (by name); ``block`` is the first one's."""
    return Deployment(chain_id=chain_id, token=addresses["CreditToken"], market=addresses["JobMarket"], block=block,
                      admin=admin, rpc_url=rpc_url, registry=addresses["ProviderRegistry"])


def _deploy(wallet: Wallet, name: str, *args: object) -> tuple[str, int]:
    w3 = wallet.chain.w3
    factory = w3.eth.contract(abi=artifacts.abi(name), bytecode=artifacts.bytecode(name))  # type: ignore[call-overload]
    receipt = wallet.transact(factory.constructor(*args))
    address = receipt["contractAddress"]
    if address is None:
        raise TransactionFailed(f"deploying {name} created no contract")
    return to_checksum_address(address), int(receipt["blockNumber"])


def deploy(
    wallet: Wallet, *, claim_timeout: int = DEFAULT_CLAIM_TIMEOUT, admin_delay: int = DEFAULT_ADMIN_DELAY
) -> Deployment:
    """Deploys CreditToken, ProviderRegistry and JobMarket with ``wallet`` as admin (and minter).

    ``admin_delay`` seconds separate scheduling a delayed admin action from running it (0: at once).
    On a real network, :class:`dsq_chain.sdk.network_deploy.NetworkDeployer` (``dsq deploy``) prices the
    deployment first, waits for confirmations, checks the code and resumes after a failure."""
    check_parameters(claim_timeout, admin_delay)
    addresses: dict[str, str] = {}
    blocks: list[int] = []
    for name in CONTRACTS:
        args = constructor_args(name, addresses, admin=wallet.address, claim_timeout=claim_timeout,
                                admin_delay=admin_delay)
        addresses[name], block = _deploy(wallet, name, *args)
        blocks.append(block)
    return assemble(addresses, chain_id=wallet.chain.chain_id, block=blocks[0], admin=wallet.address,
                    rpc_url=wallet.chain.rpc_url)


def code_sizes(chain: Chain, deployment: Deployment) -> dict[str, int]:
    """Bytes of deployed code of each contract of ``deployment`` (EIP-170 allows :data:`CODE_SIZE_LIMIT`)."""
    addresses = {"CreditToken": deployment.token, "JobMarket": deployment.market,
                 "ProviderRegistry": deployment.registry}
    return {name: len(bytes(chain.w3.eth.get_code(to_checksum_address(addr))))
            for name, addr in addresses.items() if addr}
