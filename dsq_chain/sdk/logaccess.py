"""Signed requests for a job's logs (EIP-712), and a client that tails and follows them.

A job's output stays with its provider; the provider's log server shows it to the job's owner only.
The owner signs a short-lived :func:`log_request` — typed data naming the job, the provider, an expiry
and a random nonce, in the domain of the market on its chain — with the key that submitted the job
(``eth_signTypedData_v4`` in a browser wallet, :func:`sign_log_request` here). The server recovers the
signer, compares it with the job's owner on chain and refuses replays of a nonce.

:class:`LogClient` reads ``/v1/jobs/{id}/logs`` as server-sent events (``log`` with text and the offset
after it, ``end`` once the job is final and everything was sent). When the stream breaks (the worker
restarts, the network drops) it signs a fresh request and resumes from the last offset, so
``dsq logs --follow`` neither loses nor repeats output.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import requests
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.address import to_checksum_address

from dsq_chain.errors import ChainUnavailable, DsqError

#: Longest a signed request may live; the server refuses expiries further away.
MAX_TTL_S = 300
DEFAULT_TTL_S = 120
DOMAIN_NAME = "dsq-chain logs"
DOMAIN_VERSION = "1"
TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"},
                     {"name": "chainId", "type": "uint256"}, {"name": "verifyingContract", "type": "address"}],
    "LogRequest": [{"name": "jobId", "type": "uint256"}, {"name": "provider", "type": "address"},
                   {"name": "expiry", "type": "uint256"}, {"name": "nonce", "type": "bytes32"}],
}


def log_request(chain_id: int, market: str, job_id: int, provider: str, expiry: int | None = None,
                nonce: str | None = None) -> dict[str, Any]:
    """The EIP-712 typed data an owner signs to read ``job_id``'s logs from ``provider``."""
    return {
        "types": TYPES,
        "primaryType": "LogRequest",
        "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": int(chain_id),
                   "verifyingContract": to_checksum_address(market)},
        "message": {"jobId": int(job_id), "provider": to_checksum_address(provider),
                    "expiry": int(expiry if expiry is not None else time.time() + DEFAULT_TTL_S),
                    "nonce": nonce or "0x" + secrets.token_hex(32)},
    }


def sign_log_request(private_key: str | bytes, typed: dict[str, Any]) -> str:
    """The owner's signature of ``typed`` (0x hex, 65 bytes)."""
    signed = Account.sign_message(encode_typed_data(full_message=typed), private_key)
    return "0x" + bytes(signed.signature).hex()


def recover_signer(typed: dict[str, Any], signature: str) -> str:
    """Who signed ``typed``; raises ValueError for a signature that is not one."""
    try:
        return str(Account.recover_message(encode_typed_data(full_message=typed), signature=signature))
    except Exception as e:  # eth_keys raises several types for malformed signatures
        raise ValueError(f"not a valid signature: {e}") from None


@dataclass(frozen=True, slots=True)
class LogChunk:
    text: str
    offset: int


class LogAccessDenied(DsqError):
    """The log server refused the request (401/403): not the owner, expired, replayed."""


class LogClient:
    """Reads a job's logs from its provider's log server as their owner."""

    def __init__(self, server: str, private_key: str | bytes, chain_id: int, market: str, provider: str,
                 *, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self._key = private_key
        self.chain_id = chain_id
        self.market = market
        self.provider = provider
        self.timeout = timeout

    def __repr__(self) -> str:  # never shows the key
        return f"LogClient({self.server!r})"

    def _params(self, job_id: int, stream: str, offset: int, follow: bool) -> dict[str, Any]:
        typed = log_request(self.chain_id, self.market, job_id, self.provider)
        return {"expiry": typed["message"]["expiry"], "nonce": typed["message"]["nonce"],
                "signature": sign_log_request(self._key, typed), "stream": stream, "offset": offset,
                "follow": int(follow)}

    def read(self, job_id: int, stream: str = "stdout", offset: int = 0, *, follow: bool = False,
             retry_for: float = 600.0, on_retry: Callable[[Exception], None] | None = None) -> Iterator[LogChunk]:
        """The log from ``offset``; with ``follow``, until the job ends, reconnecting for up to ``retry_for`` s."""
        down_since: float | None = None
        while True:
            try:
                for event, data in self._events(job_id, stream, offset, follow):
                    down_since = None
                    if event == "log":
                        offset = int(data["offset"])
                        yield LogChunk(str(data["text"]), offset)
                    elif event == "end":
                        return
                if not follow:
                    return
            except LogAccessDenied:
                raise
            except (requests.RequestException, OSError, ValueError) as e:
                if not follow:
                    raise ChainUnavailable(f"log server {self.server}: {e}") from None
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > retry_for:
                    raise ChainUnavailable(f"log server {self.server} unreachable for {retry_for:.0f} s: {e}") from None
                if on_retry is not None:
                    on_retry(e)
                time.sleep(1.0)

    def _events(self, job_id: int, stream: str, offset: int, follow: bool) -> Iterator[tuple[str, Any]]:
        url = f"{self.server}/v1/jobs/{job_id}/logs"
        with requests.get(url, params=self._params(job_id, stream, offset, follow), stream=True,
                          timeout=(5.0, self.timeout if not follow else 60.0)) as resp:
            if resp.status_code in (401, 403):
                raise LogAccessDenied(f"{self.server} refused: HTTP {resp.status_code} {resp.text[:200]}")
            if resp.status_code != 200:
                raise ValueError(f"{self.server}: HTTP {resp.status_code} {resp.text[:200]}")
            event, data = "message", list[str]()
            for line in _lines(resp):
                if line == "":
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].strip())
            raise ConnectionError("log stream closed before the job ended")


def _lines(resp: requests.Response) -> Iterator[str]:
    """The response's lines as soon as each arrives (``iter_lines`` waits for 512 bytes first)."""
    buf = b""
    while True:
        data = resp.raw.read1(65536)
        if not data:
            return
        buf += data
        *lines, buf = buf.split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode("utf-8", errors="replace")
