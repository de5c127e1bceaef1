"""What a code in a record is: known to the loaded release, a valid code it does not know, or not
a code at all. The one question every reader of records asks of the terminology.

A valid identifier the release does not know is still a concept someone issued (a newer release,
an extension we have not loaded), so it is sent and counted, never dropped: only an identifier
that breaks SNOMED CT's own rules (see sctid) is refused.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from gpdpr.terminology import store
from gpdpr.terminology.sctid import concept_problem

SYSTEMS = ("snomed", "dmd")  # dm+d products are concepts of SNOMED CT's UK drug extension


class Status(IntEnum):
    KNOWN = 0
    NOT_IN_RELEASE = 1  # valid, but the loaded release has no such concept
    INVALID = 2
    MISSING = 3  # no code given (in `classify_all` only)


def classify(system: str, code: str) -> Status:
    """KNOWN, NOT_IN_RELEASE or INVALID, for a code of `system` (snomed or dmd)."""
    _check_system(system)
    if concept_problem(code) is not None:
        return Status.INVALID
    known = store.active().knows(np.array([int(code)], np.int64))
    return Status.KNOWN if bool(known[0]) else Status.NOT_IN_RELEASE


def classify_all(system: str, codes: pa.Array | pa.ChunkedArray) -> npt.NDArray[np.int8]:
    """`classify` over a column of codes, as an array of Status values (MISSING for a null).
    Each distinct code is checked once, so a column of millions of rows costs its few thousand
    distinct codes."""
    _check_system(system)
    if isinstance(codes, pa.ChunkedArray):
        codes = codes.combine_chunks()
    encoded = pc.dictionary_encode(codes.cast(pa.string()))
    distinct = encoded.dictionary.to_pylist()
    status = np.full(len(distinct) + 1, Status.MISSING, np.int8)  # the last slot: null
    valid = [i for i, c in enumerate(distinct) if concept_problem(c) is None]
    status[: len(distinct)] = Status.INVALID
    if valid:
        ids = np.array([int(distinct[i]) for i in valid], np.int64)
        known = store.active().knows(ids)
        status[valid] = np.where(known, Status.KNOWN, Status.NOT_IN_RELEASE)
    where = encoded.indices.fill_null(len(distinct)).to_numpy(zero_copy_only=False)
    out: npt.NDArray[np.int8] = status[where]
    return out


def problem(code: str) -> str | None:
    """Why `code` is not a SNOMED CT or dm+d code, or None when it is one."""
    return concept_problem(code)


def _check_system(system: str) -> None:
    if system not in SYSTEMS:
        raise ValueError(f"code system {system!r} is not one of {SYSTEMS}")
