"""Helpers for tests of the practice extractor: keys, running extracts, reading packages."""

from __future__ import annotations

import atexit
import hmac
from collections.abc import Iterable
from contextlib import ExitStack
from hashlib import sha256
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from gpdpr.custodian.keys import init, issue_practice, read_pseudonym_key
from gpdpr.custodian.service import running
from gpdpr.practice import oprf
from gpdpr.practice.extract import ExtractRequest, extract
from gpdpr.practice.pseudonyms import nhs_input, record_key_input

SERVICES = ExitStack()
atexit.register(SERVICES.close)
# One service serves the whole test session, and the suite extracts the same practices again and
# again: under the real daily allowance a late test's extract was refused (HTTP 429). The
# allowance itself is tested on a service of its own (tests/test_custodian_service.py).
SESSION_ALLOWANCE = 100_000_000


class Keys:
    """A custodian key folder with its pseudonym service running (a real HTTP server on a free
    port, for as long as the test process), issuing practice kits on demand."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        init(folder)
        self.url = SERVICES.enter_context(running(folder, SESSION_ALLOWANCE))

    def kit(self, ods: str) -> Path:
        kit = self.folder / "practices" / ods
        return kit if kit.exists() else issue_practice(self.folder, ods, self.url)

    def oprf_output(self, data: bytes) -> bytes:
        """The custodian's function, straight from its key (tests/test_oprf.py checks it is
        the RFC's)."""
        return oprf.evaluate(read_pseudonym_key(self.folder).key, data)


def record_pseudonyms(keys: Keys, ods: str, table: str, ids: Iterable[object]) -> set[str]:
    """The keyed codes record ids leave as, derived here from the documented method (HMAC-SHA256
    of "<ods>:<table>:<id>" under the practice's record key, the first 32 bytes of the OPRF of
    its record-key input), not from the extractor's code."""
    subkey = keys.oprf_output(record_key_input(ods))[:32]
    return {hmac.new(subkey, f"{ods}:{table}:{i}".encode(), sha256).hexdigest() for i in ids}


def run(practice: Path, out: Path, keys: Keys, **kwargs: Any) -> dict[str, Any]:
    return extract(ExtractRequest(practice, out, keys.kit(practice.name), **kwargs))


def tables(package: Path) -> dict[str, pa.Table]:
    return {p.stem: pq.read_table(p) for p in sorted(package.glob("*.parquet"))}


def patient_pseudonym(keys: Keys, nhs_number: str) -> str:
    """A patient's pseudonym from their NHS number, by the documented method: the first 32
    bytes of the custodian's OPRF of the NHS-number input, in hex."""
    return keys.oprf_output(nhs_input(nhs_number))[:32].hex()


def nation(
    synth_to: Path, keys: Path, packages: Path, practices: int, patients: int, seed: int, **kw: Any
) -> list[Path]:
    """A small clean columnar nation made for a service's home: `practices` synthesised into
    `synth_to`, a custodian made at `keys` (its service running while they extract) issuing
    each its kit, and each extracted into `packages` (`kw`: to `extract_many`). The practice
    folders."""
    from gpdpr.practice.many import extract_many
    from gpdpr.synth.run import SynthRequest, synthesise

    request = SynthRequest(synth_to, practices, patients, seed, "columnar", mess_rate=0)
    synthesise(request)
    folders = sorted(p for p in request.out.iterdir() if p.is_dir())
    init(keys)
    with running(keys) as url:  # the practices' pseudonyms come from its service
        for folder in folders:
            issue_practice(keys, folder.name, url)
        extract_many(folders, packages, keys / "practices", **kw)
    return folders
