from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import settings

from databases import BACKENDS, engines
from extracting import Keys
from extracting import run as run_extract
from governing import cast
from gpdpr.synth.nation import Nation
from gpdpr.synth.run import SynthRequest, SynthSummary, synthesise
from readers import FhirOutput, practice_folders, read_fhir

# Property tests check behaviour, not speed (that is what bench/ is for): no per-example
# deadline, so a loaded CI machine cannot fail them.
settings.register_profile("gpdpr", deadline=None)
settings.load_profile("gpdpr")


@dataclass
class Made:
    root: Path
    summary: SynthSummary
    nation: Nation


def make(tmp: Path, name: str, **kwargs: Any) -> Made:
    request = SynthRequest(out=tmp / name, **kwargs)
    summary, nation = synthesise(request)
    return Made(request.out, summary, nation)


def one_practice(tmp: Path, patients: int, seed: int) -> Made:
    """One clean columnar practice: the small world a test of keys or authority starts from."""
    return make(
        tmp, "columnar", format="columnar", practices=1, patients=patients, seed=seed, mess_rate=0.0
    )


CLEAN = {"practices": 6, "patients": 12_000, "seed": 7, "mess_rate": 0.0}
MESSY = {"practices": 3, "patients": 6_000, "seed": 8, "mess_rate": 0.02}


@pytest.fixture(scope="session")
def clean_columnar(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make(tmp_path_factory.mktemp("clean"), "columnar", format="columnar", **CLEAN)


@pytest.fixture(scope="session")
def clean_fhir(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make(tmp_path_factory.mktemp("clean"), "fhir", format="fhir", **CLEAN)


@pytest.fixture(scope="session")
def messy_columnar(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make(tmp_path_factory.mktemp("messy"), "columnar", format="columnar", **MESSY)


@pytest.fixture(scope="session")
def messy_fhir(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return make(tmp_path_factory.mktemp("messy"), "fhir", format="fhir", **MESSY)


@pytest.fixture(scope="session")
def nation_50k(tmp_path_factory: pytest.TempPathFactory) -> Made:
    """The 50,000-patient run the realism figures are checked on (default fault rate)."""
    return make(
        tmp_path_factory.mktemp("big"),
        "columnar",
        format="columnar",
        practices=10,
        patients=50_000,
        seed=11,
    )


@pytest.fixture(scope="session")
def clean_fhir_read(clean_fhir: Made) -> FhirOutput:
    """The clean FHIR output, parsed once for every test that reads it."""
    return read_fhir(clean_fhir.root)


@pytest.fixture(scope="session")
def messy_fhir_read(messy_fhir: Made) -> FhirOutput:
    return read_fhir(messy_fhir.root)


# ---- the practice extractor ------------------------------------------------------------------


@dataclass
class Extracted:
    packages: Path  # one package per practice, named by ODS code
    manifests: dict[str, dict[str, object]]


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    """The custodian's key folder for the whole test session."""
    return Keys(tmp_path_factory.mktemp("custodian") / "keys")


def _extract_all(made: Made, out: Path, keys: Keys, limit: int | None = None) -> Extracted:
    out.mkdir()
    manifests = {}
    for folder in practice_folders(made.root)[:limit]:
        manifests[folder.name] = run_extract(folder, out / folder.name, keys)
    return Extracted(out, manifests)


@pytest.fixture(scope="session")
def clean_columnar_packages(
    clean_columnar: Made, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Extracted:
    return _extract_all(clean_columnar, tmp_path_factory.mktemp("pkg") / "columnar", keys)


@pytest.fixture(scope="session")
def clean_fhir_packages(
    clean_fhir: Made, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Extracted:
    """The same practices from FHIR (the first two: FHIR is the slower format to read)."""
    return _extract_all(clean_fhir, tmp_path_factory.mktemp("pkg") / "fhir", keys, limit=2)


@pytest.fixture(scope="session")
def messy_fhir_packages(
    messy_fhir: Made, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Extracted:
    return _extract_all(messy_fhir, tmp_path_factory.mktemp("pkg") / "messy", keys)


# ---- governance ------------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def gov(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    """A central database holding the governance cast of governing.py, on each backend."""
    for made in engines(request.param, tmp_path):
        cast(made)
        yield made


# ---- the research environment's engines ------------------------------------------------------


@pytest.fixture(params=["duckdb", "spark"])
def engine(request: pytest.FixtureRequest) -> object:
    """Each engine a definition can run on (tre_data.engine: one per test process)."""
    import tre_data

    return tre_data.engine(request.param)
