"""Deploying the stack to a real network: priced first, every transaction confirmed and its code checked
against the artifacts, and progress kept in a file so a run that failed halfway resumes.

:class:`NetworkDeployer` is what ``dsq deploy`` runs. :meth:`~NetworkDeployer.prepare` reads the progress
file (``deployment.progress.json`` beside the deployment file), checks every step it records on chain and
prices the steps left (:class:`Plan`); :meth:`~NetworkDeployer.run` sends them one by one. Before each
transaction is sent, its nonce, hash and future address are written to the progress file, so a process
killed at any point is resumed without sending anything twice: a run finds a recorded transaction mined,
waiting in the node's pool, or gone (then only is it sent again). A transaction not mined within the
wallet's ``replace_after`` seconds is signed again with the same nonce and higher fees, as the SDK does
for every transaction; whichever version is mined counts. A step counts as done once its
transaction is ``confirmations`` blocks deep, the runtime code at its address matches the artifacts
(:mod:`dsq_chain.sdk.codecheck`) and the transaction's input is the artifacts' creation code with the
expected constructor arguments. The progress file also records the chain id, the deploying account,
the parameters and a hash of each contract's creation code: a run against another chain, with another
key, other parameters or other artifacts is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import string
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

from eth_typing import HexAddress
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3.contract.contract import ContractConstructor
from web3.exceptions import TransactionNotFound
from web3.types import Nonce, TxReceipt
from web3.utils.address import get_create_address

from dsq_chain import artifacts
from dsq_chain.errors import InputError, TransactionFailed
from dsq_chain.sdk.chain import GAS_ADDEND, GAS_MARGIN, Call, Wallet, node_errors
from dsq_chain.sdk.codecheck import code_difference
from dsq_chain.sdk.deployment import (
    CONTRACTS,
    DEFAULT_CLAIM_TIMEOUT,
    Deployment,
    assemble,
    check_parameters,
    constructor_args,
)

#: The progress file's format; another one is refused.
PROGRESS_VERSION = 1
#: Seconds between polls of the node while waiting for a receipt or for confirmations.
POLL_S = 0.25
WEI_PER_ETH = 10**18
#: Seconds between scheduling a delayed admin action and running it, on a real network unless told
#: otherwise: two days, for watchdogs to see it coming (``dsq deploy --admin-delay``).
NETWORK_ADMIN_DELAY = 2 * 86400


class InsufficientFunds(InputError):
    """The deploying account cannot pay for the deployment."""


class NotTheArtifacts(InputError):
    """What is on chain at a recorded step is not what the artifacts and the progress file say."""


def progress_path(deployment_path: Path) -> Path:
    """Where the progress of a deployment to ``deployment_path`` is kept (beside it)."""
    return deployment_path.with_name(f"{deployment_path.stem}.progress.json")


def eth(wei: int) -> str:
    """``wei`` in ether (the chain's native coin), rounded up to the gwei, without trailing zeros."""
    text = format(Decimal(-(-wei // 10**9)) / 10**9, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def gwei(wei: int) -> str:
    return format(Decimal(wei) / 10**9, ".3f").rstrip("0").rstrip(".")


def create_address(sender: str, nonce: int) -> str:
    """The address a contract created by ``sender``'s transaction with ``nonce`` gets (CREATE)."""
    return str(get_create_address(cast(HexAddress, sender), cast(Nonce, nonce)))


def shareable_rpc_url(url: str) -> str:
    """The RPC URL to record in the deployment file, which is meant to be shared: a local node's only.
    A provider's URL often carries an API key (in its path, query or user part); users of the deployment
    pass their own (``--rpc-url``, ``DSQ_RPC_URL``)."""
    host = urlsplit(url).hostname or ""
    return url if host in ("127.0.0.1", "localhost", "::1") else ""


def artifact_digests() -> dict[str, str]:
    """sha256 of each contract's creation code: what the progress file pins the deployment to."""
    return {name: hashlib.sha256(artifacts.bytecode(name).encode()).hexdigest() for name in CONTRACTS}


# ------------------------------------------------------------------------------------ progress file
@dataclass
class Step:
    """One contract's deployment: sent once ``tx`` is set, done once ``block`` is."""

    contract: str
    nonce: int | None = None
    tx: str = ""
    address: str = ""
    block: int | None = None
    #: The gas limit and fees ``tx`` was signed with.
    gas: int = 0
    fees: dict[str, int] = field(default_factory=dict)
    #: Earlier versions of ``tx`` (same nonce, lower fees), replaced because they were not mined in time.
    replaced: list[str] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.block is not None

    @property
    def sent(self) -> bool:
        return bool(self.tx) and not self.done

    def clear(self) -> None:
        """Back to "not sent" (its transaction never reached the chain)."""
        self.nonce, self.tx, self.address, self.block = None, "", "", None
        self.gas, self.fees, self.replaced = 0, {}, []


@dataclass
class Progress:
    """What the progress file holds."""

    chain_id: int
    deployer: str
    admin: str
    claim_timeout: int
    admin_delay: int
    artifacts: dict[str, str]
    steps: list[Step] = field(default_factory=list)
    version: int = PROGRESS_VERSION

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Progress:
        try:
            data = json.loads(path.read_text())
            if data.get("version") != PROGRESS_VERSION:
                raise InputError(f"progress file {path} has format {data.get('version')!r}, this dsq reads "
                                 f"{PROGRESS_VERSION}: finish with the dsq that started it, or delete the file")
            steps = [Step(**s) for s in data.pop("steps")]
            progress = cls(**data, steps=steps)
        except FileNotFoundError:
            raise InputError(f"progress file {path} not found") from None
        except json.JSONDecodeError as e:
            raise InputError(f"progress file {path} is not JSON: {e}") from None
        except (KeyError, TypeError, AttributeError) as e:
            raise InputError(f"progress file {path} lacks or mangles a field ({e})") from None
        if [s.contract for s in progress.steps] != list(CONTRACTS):
            raise InputError(f"progress file {path} lists steps {[s.contract for s in progress.steps]}, "
                             f"expected {list(CONTRACTS)}")
        return progress


# ------------------------------------------------------------------------------------------ the plan
@dataclass(frozen=True)
class Plan:
    """The steps left, their gas limits and the price: what is shown before anything is sent."""

    deployer: str
    chain_id: int
    #: The account that receives every admin role (the deployer unless ``--admin`` named another).
    admin: str
    done: list[Step]
    #: (contract, gas limit) of every step still to send (or to wait for, when ``pending`` holds it).
    todo: list[tuple[str, int]]
    #: Contracts whose transaction was sent by an earlier run and is still to be waited for.
    pending: list[str]
    fees: dict[str, int]
    balance: int

    @property
    def gas(self) -> int:
        """The gas limits of the transactions still to send (the node's estimates plus the SDK's margin)."""
        return sum(g for name, g in self.todo if name not in self.pending)

    @property
    def estimated_gas(self) -> int:
        """The node's estimates of the gas those transactions use (their limits without the margin)."""
        return sum(round((g - GAS_ADDEND) / GAS_MARGIN) for name, g in self.todo if name not in self.pending)

    @property
    def expected_price(self) -> int:
        """Wei per gas expected: the base fee plus the tip (or the legacy gas price)."""
        if "gasPrice" in self.fees:
            return self.fees["gasPrice"]
        tip = self.fees["maxPriorityFeePerGas"]
        return (self.fees["maxFeePerGas"] - tip) // 2 + tip

    @property
    def max_price(self) -> int:
        """The most wei per gas the transactions allow."""
        return self.fees.get("gasPrice", self.fees.get("maxFeePerGas", 0))

    @property
    def expected_cost(self) -> int:
        return self.estimated_gas * self.expected_price

    @property
    def max_cost(self) -> int:
        return self.gas * self.max_price

    def lines(self) -> list[str]:
        """The plan in words, one line each (no secrets)."""
        out = [f"deploying to chain {self.chain_id} from {self.deployer}"]
        if self.admin != self.deployer:
            out.append(f"admin (every admin role, and the minter of credits): {self.admin}; the deploying account "
                       "gets no role")
        out += [f"  {s.contract}: deployed at {s.address} (block {s.block}), kept" for s in self.done]
        for name, gas in self.todo:
            out.append(f"  {name}: {'sent earlier, waiting for it' if name in self.pending else 'to deploy'}, "
                       f"gas limit {gas:,}")
        if "gasPrice" in self.fees:
            out.append(f"gas price {gwei(self.max_price)} gwei")
        else:
            out.append(f"fees: {gwei(self.expected_price)} gwei per gas expected (base fee + tip), "
                       f"at most {gwei(self.max_price)} gwei")
        out.append(f"cost: about {eth(self.expected_cost)} ETH ({self.estimated_gas:,} gas estimated), at most "
                   f"{eth(self.max_cost)} ETH (gas limits {self.gas:,}); the account holds {eth(self.balance)} ETH")
        return out

    def require_funds(self) -> None:
        """Raises :class:`InsufficientFunds` naming the amount when the balance cannot pay the most the
        steps left may cost."""
        if self.balance < self.max_cost:
            raise InsufficientFunds(
                f"insufficient funds: deploying needs up to {eth(self.max_cost)} ETH ({self.gas:,} gas at up to "
                f"{gwei(self.max_price)} gwei), {self.deployer} holds {eth(self.balance)} ETH: send it at least "
                f"{eth(self.max_cost - self.balance)} ETH more")


def admin_address(text: str) -> str:
    """``text`` as a checksummed address to make admin; raises :class:`InputError` for anything else (a
    malformed or mis-checksummed address, or the zero address, which would leave the grid without admin)."""
    digits = text[2:] if isinstance(text, str) and text.startswith("0x") else ""
    if len(digits) != 40 or not all(c in string.hexdigits for c in digits):
        raise InputError(f"--admin {text!r} is not an address (0x and 40 hex digits)")
    address = to_checksum_address(text)
    if digits not in (digits.lower(), digits.upper()) and address != text:
        raise InputError(f"--admin {text!r} has a wrong checksum (mixed case must be {address}): a typo?")
    if int(address, 16) == 0:
        raise InputError("--admin is the zero address: nobody could ever approve a provider or mint credits")
    return address


# ------------------------------------------------------------------------------------------ the deployer
class NetworkDeployer:
    """Deploys :data:`~dsq_chain.sdk.deployment.CONTRACTS` with ``wallet`` to the deployment file
    ``deployment_path``, resumably. ``admin`` receives every admin role and the minter role (a multisig or
    a hardware wallet's address, say; the deploying account keeps none); None: ``wallet``'s account.
    ``admin``/``claim_timeout``/``admin_delay`` of None take the values a resumed deployment recorded,
    else the deployer, :data:`~dsq_chain.sdk.deployment.DEFAULT_CLAIM_TIMEOUT` and
    :data:`NETWORK_ADMIN_DELAY`.

    ``report`` receives one line per event (sent, mined, confirmed, checked)."""

    def __init__(
        self,
        wallet: Wallet,
        deployment_path: Path,
        *,
        admin: str | None = None,
        claim_timeout: int | None = None,
        admin_delay: int | None = None,
        confirmations: int = 1,
        timeout: float = 600.0,
        report: Callable[[str], None] = lambda line: None,
    ) -> None:
        if confirmations < 1:
            raise InputError(f"--confirmations must be at least 1, got {confirmations}")
        self.wallet = wallet
        self.chain = wallet.chain
        self.deployment_path = Path(deployment_path)
        self.progress_path = progress_path(self.deployment_path)
        self.admin = None if admin is None else admin_address(admin)
        self.claim_timeout = claim_timeout
        self.admin_delay = admin_delay
        self.confirmations = confirmations
        self.timeout = timeout
        self.report = report
        self.progress: Progress | None = None

    # -- preparing ------------------------------------------------------------------------------------
    def prepare(self) -> Plan:
        """Loads or starts the progress, checks every recorded step on chain, prices the steps left.
        Sends nothing."""
        chain_id = self.chain.chain_id  # (an unreachable node raises ChainUnavailable here)
        if self.progress_path.exists():
            progress = self._resume(chain_id)
        else:
            if self.deployment_path.exists():
                raise InputError(f"deployment file {self.deployment_path} already exists (and no progress file "
                                 f"{self.progress_path} beside it): choose another --deployment")
            claim = DEFAULT_CLAIM_TIMEOUT if self.claim_timeout is None else self.claim_timeout
            delay = NETWORK_ADMIN_DELAY if self.admin_delay is None else self.admin_delay
            check_parameters(claim, delay)
            progress = Progress(chain_id=chain_id, deployer=self.wallet.address,
                                admin=self.admin or self.wallet.address, claim_timeout=claim, admin_delay=delay,
                                artifacts=artifact_digests(), steps=[Step(name) for name in CONTRACTS])
        self.progress = progress
        self._check_done_steps(progress)
        return self._price(progress)

    def _resume(self, chain_id: int) -> Progress:
        progress = Progress.load(self.progress_path)
        where = f"progress file {self.progress_path}"
        if progress.chain_id != chain_id:
            raise InputError(f"{where} records chain id {progress.chain_id}, the node at {self.chain.rpc_url} is "
                             f"chain {chain_id}: point --rpc-url at the chain it started on, or choose another "
                             "--deployment")
        if progress.deployer != self.wallet.address:
            raise InputError(f"{where} was started by account {progress.deployer}, this key is "
                             f"{self.wallet.address}: resume with the same keystore")
        changed = sorted(n for n, d in artifact_digests().items() if progress.artifacts.get(n) != d)
        if changed:
            raise InputError(f"the contracts changed since the deployment in {where} started ({', '.join(changed)} "
                             "differ from the artifacts it recorded): finish it with the dsq that started it, or "
                             "choose another --deployment to deploy anew")
        if self.admin is not None and self.admin != progress.admin:
            raise InputError(f"{where} was started with admin {progress.admin}, not {self.admin}: resume with the "
                             "same --admin (or none), or choose another --deployment")
        for name, given, recorded in (("claim timeout", self.claim_timeout, progress.claim_timeout),
                                      ("admin delay", self.admin_delay, progress.admin_delay)):
            if given is not None and given != recorded:
                raise InputError(f"{where} was started with {name} {recorded} s, not {given}: resume with the same "
                                 "value (or none), or choose another --deployment")
        return progress

    def _check_done_steps(self, progress: Progress) -> None:
        """Every step recorded as done must still be on chain as recorded; from the first one that is not
        (a reorg took it away), that step and the ones after it are deployed again."""
        addresses: dict[str, str] = {}
        for i, step in enumerate(progress.steps):
            if not step.done:
                continue
            code = bytes(self._get_code(step.address))
            if not code:
                self.report(f"{step.contract}: recorded at {step.address} but no code is there now (a reorg?): "
                            "deploying it and what follows again")
                for later in progress.steps[i:]:
                    later.clear()
                return
            self._verify(step, code, addresses, progress)
            addresses[step.contract] = step.address

    def _price(self, progress: Progress) -> Plan:
        nonce = self._nonce("pending")
        addresses = {s.contract: s.address for s in progress.steps if s.address}
        todo: list[tuple[str, int]] = []
        pending: list[str] = []
        fresh = 0
        for step in progress.steps:
            if step.done:
                continue
            if step.sent:
                pending.append(step.contract)
            else:
                addresses[step.contract] = create_address(progress.deployer, nonce + fresh)
                fresh += 1
            todo.append((step.contract, self._estimate(step.contract, addresses, progress)))
        return Plan(deployer=progress.deployer, chain_id=progress.chain_id, admin=progress.admin,
                    done=[s for s in progress.steps if s.done], todo=todo, pending=pending,
                    fees=self.wallet.fees(), balance=self._balance())

    # -- running --------------------------------------------------------------------------------------
    def run(self, plan: Plan) -> Deployment:
        """Sends the steps left in order, waits for each, writes the deployment file and returns it."""
        progress = self.progress
        if progress is None:
            raise InputError("NetworkDeployer.run needs prepare() first")
        plan.require_funds()
        progress.save(self.progress_path)
        addresses = {s.contract: s.address for s in progress.steps if s.done}
        spent = 0
        for step in progress.steps:
            if step.done:
                continue
            data = self._creation_data(step.contract, addresses, progress)
            if not (step.sent and self._still_sent(step, progress)):
                self._send(step, data, addresses, progress)
            receipt = self._confirmed(step, progress, data)
            step.block = int(receipt["blockNumber"])
            self._verify(step, bytes(self._get_code(step.address)), addresses, progress)
            progress.save(self.progress_path)
            addresses[step.contract] = step.address
            spent += int(receipt["gasUsed"]) * int(receipt.get("effectiveGasPrice", 0))
            self.report(f"{step.contract}: deployed at {step.address} in block {step.block}, "
                        f"{self.confirmations} confirmation(s), code matches the artifacts")
        if spent:
            self.report(f"spent {eth(spent)} ETH")
        deployment = assemble(addresses, chain_id=progress.chain_id, block=int(progress.steps[0].block or 0),
                              admin=progress.admin, rpc_url=shareable_rpc_url(self.chain.rpc_url))
        deployment.save(self.deployment_path)
        return deployment

    def _send(self, step: Step, data: str, addresses: dict[str, str], progress: Progress) -> None:
        fees = self.wallet.fees()
        gas = self._estimate(step.contract, addresses, progress)
        nonce = self._nonce("pending")
        step.nonce, step.address = nonce, create_address(progress.deployer, nonce)
        error = self._sign_and_send(step, progress, data, gas, fees)
        if error is not None:
            step.clear()
            progress.save(self.progress_path)
            if "insufficient funds" in error.lower():
                price = fees.get("gasPrice", fees.get("maxFeePerGas", 0))
                raise InsufficientFunds(f"insufficient funds: deploying {step.contract} needs up to "
                                        f"{eth(gas * price)} ETH ({gas:,} gas at up to {gwei(price)} gwei), "
                                        f"{progress.deployer} holds {eth(self._balance())} ETH")
            raise TransactionFailed(f"the node refused the {step.contract} deployment: {error}")
        self.report(f"{step.contract}: sent {step.tx} (nonce {nonce}, gas limit {gas:,})")

    def _sign_and_send(self, step: Step, progress: Progress, data: str, gas: int, fees: dict[str, int]) -> str | None:
        """Signs the creation of ``step``'s contract with its nonce, records the hash as the step's
        transaction (before sending: a run killed from here on finds it) and sends it. Returns the
        node's error message, if it refused."""
        tx = {"nonce": step.nonce, "gas": gas, "data": data, "chainId": progress.chain_id, "value": 0, **fees}
        raw = HexBytes(self.wallet.signer.sign_transaction(tx))
        step.tx, step.gas, step.fees = HexBytes(keccak(raw)).to_0x_hex(), gas, fees
        progress.save(self.progress_path)
        resp = self.chain.request("eth_sendRawTransaction", [raw.to_0x_hex()])
        if "error" not in resp:
            return None
        return str(resp["error"].get("message") if isinstance(resp["error"], dict) else resp["error"])

    def _replace(self, step: Step, progress: Progress, data: str) -> None:
        """Sends ``step``'s transaction again with the same nonce and higher fees (the base fee rose past
        its cap, or its tip is too low; some nodes then drop it from their pool); whichever version is
        mined counts."""
        previous, gas, fees = step.tx, step.gas, step.fees
        bumped = self.wallet.bumped_fees(fees)
        step.replaced.append(previous)
        error = self._sign_and_send(step, progress, data, gas, bumped)
        if error is not None:  # mined meanwhile ("nonce too low"), or the node wants more: keep waiting
            step.tx, step.fees = step.replaced.pop(), fees
            progress.save(self.progress_path)
            self.report(f"{step.contract}: replacing {previous} was refused ({error}); still waiting for it")
            return
        self.report(f"{step.contract}: {previous} not mined after {self.wallet.replace_after:.0f} s: replaced by "
                    f"{step.tx} with fees {', '.join(f'{k} {gwei(v)} gwei' for k, v in bumped.items())}")

    def _mined(self, step: Step, progress: Progress) -> TxReceipt | None:
        """The receipt of whichever version of the step's transaction is mined (then the step's ``tx``)."""
        for version in [step.tx, *reversed(step.replaced)]:
            receipt = self._receipt(version)
            if receipt is not None:
                if version != step.tx:
                    step.replaced = [v for v in [*step.replaced, step.tx] if v != version]
                    step.tx = version
                    progress.save(self.progress_path)
                return receipt
        return None

    def _still_sent(self, step: Step, progress: Progress) -> bool:
        """Whether the transaction an earlier run sent for ``step`` is mined or waiting in the node's pool;
        if it is neither, it never reached the chain: the step is cleared, to be sent again."""
        if self._mined(step, progress) is not None:
            return True
        if any(self._transaction(v) is not None for v in [step.tx, *step.replaced]):
            self.report(f"{step.contract}: {step.tx}, sent by an earlier run, is waiting in the pool")
            return True
        if self._get_code(step.address):  # mined under another hash (replaced by hand)
            raise TransactionFailed(f"{step.contract}: a contract is at {step.address} but {step.tx} is unknown to "
                                    f"the node: check it, then record it in {self.progress_path} or delete the file")
        self.report(f"{step.contract}: {step.tx}, sent by an earlier run, never reached the chain: sending again")
        step.clear()
        progress.save(self.progress_path)
        return False

    def _confirmed(self, step: Step, progress: Progress, data: str) -> TxReceipt:
        """The step's receipt once ``confirmations`` blocks deep (the block still the chain's)."""
        deadline = time.monotonic() + self.timeout
        receipt = self._wait_mined(step, progress, data, deadline)
        while True:
            depth = self.chain.block_number() - int(receipt["blockNumber"]) + 1
            if depth >= self.confirmations:
                again = self._receipt(step.tx)
                if again is not None and again["blockHash"] == receipt["blockHash"]:
                    return again
                receipt = self._wait_mined(step, progress, data, deadline)  # reorged: wait for it to be mined again
                continue
            if time.monotonic() >= deadline:
                raise TransactionFailed(f"{step.contract}: {step.tx} has {depth} of {self.confirmations} "
                                        f"confirmations after {self.timeout:.0f} s: run again to keep waiting")
            time.sleep(POLL_S)

    def _wait_mined(self, step: Step, progress: Progress, data: str, deadline: float) -> TxReceipt:
        """The receipt of a version of the step's transaction; one still unmined after the wallet's
        ``replace_after`` seconds is replaced with higher fees."""
        since = time.monotonic()
        while True:
            receipt = self._mined(step, progress)
            if receipt is not None:
                if receipt["status"] != 1:
                    raise TransactionFailed(f"deploying {step.contract} reverted in block {receipt['blockNumber']} "
                                            f"({step.tx}, gas used {receipt['gasUsed']:,})")
                return receipt
            now = time.monotonic()
            if now >= deadline:
                raise TransactionFailed(f"{step.contract}: {step.tx} not mined within {self.timeout:.0f} s: run again "
                                        "to keep waiting for it")
            if now - since >= self.wallet.replace_after:
                self._replace(step, progress, data)
                since = now
            time.sleep(POLL_S)

    # -- checks ---------------------------------------------------------------------------------------
    def _verify(self, step: Step, code: bytes, addresses: dict[str, str], progress: Progress) -> None:
        """The code at the step's address is the artifacts' (immutables aside) and its creating transaction
        carried the artifacts' creation code with the expected constructor arguments (which set the
        immutables and the initial storage)."""
        diff = code_difference(step.contract, code)
        if diff is not None:
            raise NotTheArtifacts(f"{step.contract} at {step.address} is not the artifacts' contract: {diff}")
        tx = self._transaction(step.tx)
        if tx is None:
            raise NotTheArtifacts(f"{step.contract}: its transaction {step.tx} is unknown to the node at "
                                    f"{self.chain.rpc_url}")
        expected = self._creation_data(step.contract, addresses, progress)
        if HexBytes(tx["input"]) != HexBytes(expected):
            raise NotTheArtifacts(f"{step.contract}: transaction {step.tx} did not deploy the artifacts' "
                                    "creation code with the expected constructor arguments")
        if tx.get("to") or to_checksum_address(tx["from"]) != progress.deployer:
            raise NotTheArtifacts(f"{step.contract}: transaction {step.tx} is not a contract creation by "
                                    f"{progress.deployer}")

    # -- node access ----------------------------------------------------------------------------------
    def _constructor(self, contract: str, addresses: dict[str, str], progress: Progress) -> ContractConstructor:
        args = constructor_args(contract, addresses, admin=progress.admin, claim_timeout=progress.claim_timeout,
                                admin_delay=progress.admin_delay)
        factory = self.chain.w3.eth.contract(abi=artifacts.abi(contract),  # type: ignore[call-overload]
                                             bytecode=artifacts.bytecode(contract))
        return factory.constructor(*args)

    def _creation_data(self, contract: str, addresses: dict[str, str], progress: Progress) -> str:
        return str(self._constructor(contract, addresses, progress).data_in_transaction)

    def _estimate(self, contract: str, addresses: dict[str, str], progress: Progress) -> int:
        return self.wallet.estimate(Call(self._constructor(contract, addresses, progress)))

    def _get_code(self, address: str) -> bytes:
        with node_errors(self.chain.rpc_url):
            return bytes(self.chain.w3.eth.get_code(to_checksum_address(address)))

    def _receipt(self, tx: str) -> TxReceipt | None:
        with node_errors(self.chain.rpc_url):
            try:
                return self.chain.w3.eth.get_transaction_receipt(HexBytes(tx))
            except TransactionNotFound:
                return None

    def _transaction(self, tx: str) -> dict[str, Any] | None:
        result = self.chain.call_rpc("eth_getTransactionByHash", [tx])
        return dict(result) if result else None

    def _nonce(self, tag: str) -> int:
        return int(self.chain.call_rpc("eth_getTransactionCount", [self.wallet.address, tag]), 16)

    def _balance(self) -> int:
        return int(self.chain.call_rpc("eth_getBalance", [self.wallet.address, "latest"]), 16)


__all__ = ["InsufficientFunds", "NetworkDeployer", "NotTheArtifacts", "Plan", "Progress", "Step", "admin_address",
           "progress_path"]
