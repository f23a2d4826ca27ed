"""Akash users' side of the grid: an SDL file becomes grid jobs, explained before placement, tied to a lease.

``translate_file(path)`` (pure, from :mod:`dsq_chain.workloads.sdl`) says what each service becomes and
what is refused, with reasons; :func:`explain` answers "why would no provider bid?" provider by provider
before anything is submitted; :func:`submit` submits the translated jobs (all or nothing: it refuses
before locking any credit when the SDL has a refused part), optionally pinned to one provider and
carrying the lease's ``dseq``. The CLI is ``dsq akash translate`` / ``dsq akash submit``.
"""

from __future__ import annotations

from dsq_chain.akash.grid import Submitted, explain, submit
from dsq_chain.workloads.lease import lease_ref, parse_lease_ref
from dsq_chain.workloads.sdl import (
    Conversion,
    SdlError,
    TranslatedJob,
    Translation,
    load_sdl,
    translate,
    translate_file,
)

__all__ = [
    "Conversion",
    "SdlError",
    "Submitted",
    "TranslatedJob",
    "Translation",
    "explain",
    "lease_ref",
    "load_sdl",
    "parse_lease_ref",
    "submit",
    "translate",
    "translate_file",
]
