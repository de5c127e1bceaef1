"""The generator's parameters, read from the sourced data files in data/ into typed objects.

Every number the generator uses about the real world lives in those files next to its source; this
module only gives them shape. Codes are referred to by catalogue key (see gpdpr.terminology).
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

import numpy as np
import numpy.typing as npt


def _read(name: str) -> dict[str, Any]:
    return tomllib.loads(resources.files(__package__).joinpath(f"data/{name}").read_text("utf-8"))


@dataclass(frozen=True)
class Treatment:
    probability: float
    drugs: list[str]
    weights: list[float]
    interval_days: int
    quantity: float
    dosage: str
    start_after_days: tuple[int, int] = (0, 60)
    course_days: tuple[int, int] | None = None  # None: continues while registered


@dataclass(frozen=True)
class Condition:
    name: str
    codes: str
    alternative_codes: dict[str, float]
    prevalence: float
    base_min_age: int
    curve: dict[str, Any]
    female_ratio: float
    min_onset_age: int
    treatments: list[Treatment]

    def relative_risk(self, age: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """Unscaled risk by age (years); zero below the age the condition can start."""
        kind = self.curve["kind"]
        if kind == "logistic":
            risk = 1.0 / (1.0 + np.exp(-(age - self.curve["midpoint"]) / self.curve["scale"]))
        elif kind == "hump":
            risk = 0.35 + np.exp(-0.5 * ((age - self.curve["midpoint"]) / self.curve["scale"]) ** 2)
        elif kind == "flat":
            risk = np.ones_like(age)
        else:
            raise ValueError(f"conditions.toml: {self.name} has unknown curve kind {kind!r}")
        return np.where(age >= self.min_onset_age, risk, 0.0)


@dataclass(frozen=True)
class Measure:
    code: str
    unit: str
    mean: float
    between_sd: float
    within_sd: float
    minimum: float
    maximum: float
    decimals: int
    mean_if: dict[str, float]
    between_sd_if: dict[str, float]


@dataclass(frozen=True)
class ObservationGroup:
    name: str
    min_age: int
    rate_per_year: float
    rate_if: dict[str, float]
    measures: list[Measure]


@dataclass(frozen=True)
class AcuteProblem:
    key: str
    weight: float
    category: str
    drug: str
    drug_probability: float


@dataclass(frozen=True)
class PlantedEpisode:
    share: float
    sex: str
    ages: tuple[int, int]


@dataclass(frozen=True)
class Params:
    age_bands: npt.NDArray[np.int64]  # band start ages
    age_counts: npt.NDArray[np.float64]  # [band, sex(0=F,1=M)]
    oldest: int
    other_sex_share: float
    death_share: float
    age_at_death: list[tuple[int, int, float]]
    leaver_share: float
    leaver_ages: tuple[int, int]
    mover_share: float
    move_gap_days: tuple[int, int]
    joined_before_window: float
    newborn_delay_days: tuple[int, int]
    temporary_share: float
    ethnicity: dict[str, float]
    ethnicity_recorded: float
    sexual_orientation: dict[str, float]
    sexual_orientation_recorded: float
    sexual_orientation_min_age: int
    smoking: dict[str, float]
    smoking_min_age: int
    smoking_rate: float
    list_size_cv: float
    smallest_share_of_mean: float
    patients_per_gp: int
    patients_per_nurse: int
    conditions: list[Condition]
    acute_rate: float
    acute: list[AcuteProblem]
    acute_quantity: float
    acute_dosage: str
    observations: list[ObservationGroup]
    immunisations: dict[str, Any]
    allergies: list[tuple[str, float]]
    allergy_reactions: list[str]
    appointments: dict[str, Any]
    referrals: dict[str, Any]
    phone_recorded: float
    email_recorded: float
    free_text: dict[str, float]
    restricted: dict[str, PlantedEpisode]
    sensitive: dict[str, PlantedEpisode]
    type1_share: float
    type1_withdrawn_share: float
    type1_first_possible: date
    entered_in_error_rate: float
    default_mess_rate: float
    names: dict[str, list[str]] = field(repr=False)

    def condition(self, name: str) -> Condition:
        return next(c for c in self.conditions if c.name == name)


def _treatment(raw: dict[str, Any]) -> Treatment:
    drugs = list(raw["drugs"])
    weights = list(raw.get("weights", [1.0] * len(drugs)))
    start = raw.get("start_after_days", [0, 60])
    course = raw.get("course_days")
    return Treatment(
        probability=float(raw["probability"]),
        drugs=drugs,
        weights=[w / math.fsum(weights) for w in weights],
        interval_days=int(raw["interval_days"]),
        quantity=float(raw["quantity"]),
        dosage=str(raw["dosage"]),
        start_after_days=(int(start[0]), int(start[1])),
        course_days=(int(course[0]), int(course[1])) if course else None,
    )


def _condition(name: str, raw: dict[str, Any]) -> Condition:
    return Condition(
        name=name,
        codes=raw["codes"],
        alternative_codes=dict(raw.get("alternative_codes", {})),
        prevalence=float(raw["prevalence"]),
        base_min_age=int(raw["base_min_age"]),
        curve=dict(raw["curve"]),
        female_ratio=float(raw["female_ratio"]),
        min_onset_age=int(raw["min_onset_age"]),
        treatments=[_treatment(t) for t in raw.get("treatment", [])],
    )


def _measure(raw: dict[str, Any]) -> Measure:
    return Measure(
        code=raw["code"],
        unit=raw["unit"],
        mean=float(raw["mean"]),
        between_sd=float(raw["between_sd"]),
        within_sd=float(raw["within_sd"]),
        minimum=float(raw["min"]),
        maximum=float(raw["max"]),
        decimals=int(raw["decimals"]),
        mean_if={k: float(v) for k, v in raw.get("mean_if", {}).items()},
        between_sd_if={k: float(v) for k, v in raw.get("between_sd_if", {}).items()},
    )


def _episode(raw: dict[str, Any]) -> PlantedEpisode:
    return PlantedEpisode(float(raw["share"]), str(raw["sex"]), (raw["ages"][0], raw["ages"][1]))


@cache
def load_params() -> Params:
    population = _read("population.toml")
    conditions = _read("conditions.toml")
    activity = _read("activity.toml")
    planted = _read("planted.toml")
    names = _read("names.toml")

    bands = np.array([b[0] for b in population["age_structure"]["bands"]], dtype=np.int64)
    counts = np.array(
        [[b[2], b[1]] for b in population["age_structure"]["bands"]], dtype=np.float64
    )
    return Params(
        age_bands=bands,
        age_counts=counts,
        oldest=int(population["age_structure"]["oldest"]),
        other_sex_share=float(population["age_structure"]["other_sex_share"]),
        death_share=float(population["deaths"]["share_of_people"]),
        age_at_death=[
            (int(a), int(b), float(s)) for a, b, s in population["deaths"]["age_at_death"]
        ],
        leaver_share=float(population["leavers"]["share_of_people"]),
        leaver_ages=tuple(population["leavers"]["age_range"]),
        mover_share=float(population["moves"]["share_of_people"]),
        move_gap_days=tuple(population["moves"]["gap_days"]),
        joined_before_window=float(population["registration"]["joined_before_window"]),
        newborn_delay_days=tuple(population["registration"]["newborn_delay_days"]),
        temporary_share=float(population["registration"]["temporary_share"]),
        ethnicity=dict(population["ethnicity"]["shares"]),
        ethnicity_recorded=float(population["ethnicity"]["recorded"]),
        sexual_orientation=dict(population["sexual_orientation"]["shares"]),
        sexual_orientation_recorded=float(
            population["sexual_orientation"]["recorded_among_adults"]
        ),
        sexual_orientation_min_age=int(population["sexual_orientation"]["min_age"]),
        smoking=dict(population["smoking"]["shares"]),
        smoking_min_age=int(population["smoking"]["min_age"]),
        smoking_rate=float(population["smoking"]["rate_per_year"]),
        list_size_cv=float(population["practices"]["list_size_cv"]),
        smallest_share_of_mean=float(population["practices"]["smallest_share_of_mean"]),
        patients_per_gp=int(population["practices"]["patients_per_gp"]),
        patients_per_nurse=int(population["practices"]["patients_per_nurse"]),
        conditions=[_condition(name, raw) for name, raw in conditions.items()],
        acute_rate=float(activity["acute"]["rate_per_year"]),
        acute=[
            AcuteProblem(k, float(w), c, d, float(p))
            for k, w, c, d, p in activity["acute"]["problems"]
        ],
        acute_quantity=float(activity["acute"]["acute_quantity"]),
        acute_dosage=str(activity["acute"]["acute_dosage"]),
        observations=[
            ObservationGroup(
                name=name,
                min_age=int(raw["min_age"]),
                rate_per_year=float(raw["rate_per_year"]),
                rate_if={k: float(v) for k, v in raw.get("rate_if", {}).items()},
                measures=[_measure(m) for m in raw["measures"]],
            )
            for name, raw in activity["observations"].items()
        ],
        immunisations=dict(activity["immunisations"]),
        allergies=[(str(k), float(s)) for k, s in activity["allergies"]["labels"]],
        allergy_reactions=list(activity["allergies"]["reactions"]),
        appointments=dict(activity["appointments"]),
        referrals=dict(activity["referrals"]),
        phone_recorded=float(planted["identifiers"]["phone_recorded"]),
        email_recorded=float(planted["identifiers"]["email_recorded"]),
        free_text={k: float(v) for k, v in planted["free_text"].items()},
        restricted={k: _episode(v) for k, v in planted["restricted"].items() if k != "source"},
        sensitive={k: _episode(v) for k, v in planted["sensitive"].items() if k != "source"},
        type1_share=float(planted["type1_dissent"]["share"]),
        type1_withdrawn_share=float(planted["type1_dissent"]["withdrawn_share"]),
        type1_first_possible=date.fromisoformat(planted["type1_dissent"]["first_possible"]),
        entered_in_error_rate=float(planted["entered_in_error"]["rate"]),
        default_mess_rate=float(planted["mess"]["default_rate"]),
        names={k: list(v) for k, v in names.items()},
    )
