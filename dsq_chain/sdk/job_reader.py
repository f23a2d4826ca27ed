"""Many jobs' on-chain records in one JSON-RPC batch of raw ``eth_call`` s: the worker's per-tick read.

:meth:`~dsq_chain.sdk.client.ProviderClient.jobs` reads the same records through web3's contract calls
(and adds each job's bill); those cost ~10 ms of Python per call. Here ``getJob(id)`` is encoded from
its ABI entry and the answer decoded with eth_abi, or word by word when ``JobView`` holds static fields
only — microseconds a job, which matters when a worker re-reads hundreds of jobs a tick. Either way the
``JobView`` tuple becomes a :class:`~dsq_chain.types.Job` through
:func:`~dsq_chain.sdk.views.job_from_view` (``tests/test_job_reader.py`` checks both decodings
field by field against the compiled ABI).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import collapse_if_tuple, function_abi_to_4byte_selector

from dsq_chain import artifacts
from dsq_chain.errors import TransactionFailed, decode_revert
from dsq_chain.sdk.chain import Chain, node_errors
from dsq_chain.sdk.views import job_from_view
from dsq_chain.types import Job


class JobReader:
    """Reads many jobs' on-chain records in one JSON-RPC batch of raw ``eth_call`` s (see the module docstring)."""

    CHUNK = 500

    def __init__(self, chain: Chain, market: str) -> None:
        self.chain = chain
        self.market = market
        abi = next(i for i in artifacts.abi("JobMarket") if i.get("type") == "function" and i["name"] == "getJob")
        self.selector = bytes(function_abi_to_4byte_selector(cast(Any, abi)))
        self.output_types = [collapse_if_tuple(o) for o in abi["outputs"]]
        # JobView holds static fields only: each is one 32-byte word, sliced directly (eth_abi's generic decoder
        # costs ~0.6 ms a job).
        fields = abi["outputs"][0].get("components", []) if len(abi["outputs"]) == 1 else []
        self._words: list[str] | None = [str(f["type"]) for f in fields] or None
        if self._words and not all(_static_word(t) for t in self._words):
            self._words = None

    def read(self, job_ids: Iterable[int]) -> dict[int, Job]:
        """The jobs by id (one the contract does not have, e.g. its submission vanished in a reorg, is left
        out); raises :class:`ChainUnavailable` / :class:`TransactionFailed`."""
        ids = list(job_ids)
        out: dict[int, Job] = {}
        for start in range(0, len(ids), self.CHUNK):
            chunk = ids[start:start + self.CHUNK]
            payload = [("eth_call", [{"to": self.market, "data": "0x" + (self.selector + i.to_bytes(32, "big")).hex()},
                                     "latest"]) for i in chunk]
            with node_errors(self.chain.rpc_url):
                responses: Any = cast(Any, self.chain.w3.provider).make_batch_request(payload)
            if not isinstance(responses, list):
                raise TransactionFailed(f"batch of getJob calls refused: {responses.get('error')}")
            for job_id, resp in zip(chunk, responses, strict=True):
                if _not_found(resp):
                    continue
                if "error" in resp or resp.get("result") is None:
                    raise TransactionFailed(f"getJob({job_id}): {resp.get('error')}")
                out[job_id] = job_from_view(self.view(bytes.fromhex(str(resp["result"])[2:])))
        return out

    def view(self, data: bytes) -> tuple[Any, ...]:
        """The ``JobView`` tuple of one ``getJob`` answer, as eth_abi decodes it."""
        if self._words is not None and len(data) == 32 * len(self._words):
            return tuple(_word(t, data[32 * k:32 * k + 32]) for k, t in enumerate(self._words))
        (view,) = abi_decode(self.output_types, data)
        return tuple(view)


def _not_found(resp: dict[str, Any]) -> bool:
    """Whether a getJob answer is the contract's JobNotFound revert."""
    error = resp.get("error")
    data = error.get("data") if isinstance(error, dict) else None
    if isinstance(data, dict):
        data = data.get("data")
    return isinstance(data, str) and data.startswith("0x") and type(decode_revert(data)).__name__ == "JobNotFound"


def _static_word(t: str) -> bool:
    return t in ("address", "bool", "bytes32") or (t.startswith(("uint", "int")) and t.lstrip("uint").isdigit())


def _word(t: str, w: bytes) -> Any:
    """One static ABI word as eth_abi decodes it."""
    if t == "address":
        return "0x" + w[12:].hex()
    if t == "bytes32":
        return w
    if t == "bool":
        return w[-1] == 1
    return int.from_bytes(w, "big", signed=t.startswith("int"))
