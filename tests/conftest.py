from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from gpdpr.synth.nation import Nation
from gpdpr.synth.run import SynthRequest, SynthSummary, synthesise
from readers import FhirOutput, read_fhir


@dataclass
class Made:
    root: Path
    summary: SynthSummary
    nation: Nation


def make(tmp: Path, name: str, **kwargs: object) -> Made:
    request = SynthRequest(out=tmp / name, **kwargs)  # type: ignore[arg-type]
    summary, nation = synthesise(request)
    return Made(request.out, summary, nation)


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
