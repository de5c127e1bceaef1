"""A practice's records, drawn for a block of its registrations.

Input: the nation (person-level facts) and the registrations in one block. Output: a Generator
holding, per record table, arrays of (registration, code, date, value, ...) drawn vectorised over
the block; finish.py turns them into supplier tables (ids, staff, times, notes, faults). Text is
kept as small integer codes until then, so nothing here moves strings around.

Two rules decide which practice holds a person-level fact:
- *history* (long-term diagnoses, allergies, opt-out codes, gender reassignment) travels with the
  record when a person moves (GP2GP transfer): each registration that ends after the fact holds it,
  recorded on the later of the fact's date and the registration's start;
- *episodes* (everything else) are held only by the registration open on the day.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from gpdpr.synth.nation import (
    NO_DATE,
    YEAR,
    Days,
    IntArray,
    Nation,
    Practice,
    from_days,
    to_days,
)
from gpdpr.synth.params import Measure, Params
from gpdpr.terminology import load_catalogue

FloatArray = npt.NDArray[np.float64]
SECONDS_PER_DAY = 86_400
PLACEHOLDER_DATE = to_days(date(1900, 1, 1))  # a real extract's "date unknown" placeholder

# Faults planted at --mess-rate (see data/planted.toml). FHIR-only faults are marked here so that
# both formats are cut from the same draw.
(
    FAULT_NONE,
    UNKNOWN_CODE,
    NO_SUBJECT,
    DUPLICATE_ID,
    IMPLAUSIBLE_DATE,
    UNPARSEABLE_DATE,
    TRUNCATED,
) = range(7)
FAULT_NAMES = [
    "",
    "unknown_code",
    "no_subject",
    "duplicate_id",
    "implausible_date",
    "unparseable_date",
    "truncated_line",
]
BOTH_FORMAT_FAULTS = [UNKNOWN_CODE, NO_SUBJECT, DUPLICATE_ID, IMPLAUSIBLE_DATE]
FHIR_ONLY_FAULTS = [UNPARSEABLE_DATE, TRUNCATED]

# Staff roles, as in nation._make_staff.
GP, NURSE, HCA, PHARMACIST = "GP", "Practice nurse", "Healthcare assistant", "Clinical pharmacist"


@dataclass(frozen=True)
class Vocabulary:
    """All codes of one system that records can carry, as an array to take from; `key` maps a
    catalogue key to its codes' positions. The last few entries are deliberately unknown codes
    (not in the catalogue), used only by the unknown-code fault."""

    codes: npt.NDArray[np.str_]
    keys: dict[str, IntArray]
    unknown: IntArray

    def of(self, key: str) -> IntArray:
        try:
            return self.keys[key]
        except KeyError:
            raise KeyError(f"the code catalogue has no codes for key {key!r}") from None

    def first(self, key: str) -> int:
        return int(self.of(key)[0])


# Codes shaped like SNOMED CT / dm+d identifiers whose check digit is wrong (not codes at all: the
# kind of mistyped code a real extract contains), which the extractor quarantines. Checked against
# the catalogue when the vocabulary is built.
_UNKNOWN_SNOMED = ["999000011000230103", "1000511000000105", "44488211000001101", "285891000000107"]
_UNKNOWN_DMD = ["40000011000001109", "37000511000001103", "30000911000001107"]


@cache
def vocabularies() -> tuple[Vocabulary, Vocabulary]:
    catalogue = load_catalogue()
    result = []
    for system, unknown in (("snomed", _UNKNOWN_SNOMED), ("dmd", _UNKNOWN_DMD)):
        concepts = [c for c in catalogue.concepts if c.system == system]
        codes = [c.code for c in concepts]
        keys: dict[str, list[int]] = {}
        for i, concept in enumerate(concepts):
            keys.setdefault(concept.key, []).append(i)
        clashes = [u for u in unknown if (system, u) in catalogue]
        if clashes:
            raise ValueError(f"planted unknown codes are in the catalogue: {clashes}")
        result.append(
            Vocabulary(
                codes=np.array(codes + unknown),
                keys={k: np.array(v, dtype=np.int64) for k, v in keys.items()},
                unknown=np.arange(len(codes), len(codes) + len(unknown), dtype=np.int64),
            )
        )
    return result[0], result[1]


@dataclass
class Rows:
    """Columns of one table accumulated in parts; concatenated once per block.

    Text columns with few distinct values (category, unit, role, dosage...) are given as strings,
    one per part or one per row, and stored as small integer codes into the column's own
    vocabulary (`labels`), so that sorting and finishing never move strings around."""

    defaults: dict[str, Any]
    order_by: str  # records are sorted by registration row, then by this column
    parts: list[dict[str, npt.NDArray[Any]]] = field(default_factory=list)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, default in self.defaults.items():
            if isinstance(default, str):
                self.labels[name] = {default: 0}

    def _code(self, name: str, value: Any, n: int) -> npt.NDArray[np.int16]:
        vocabulary = self.labels[name]
        if isinstance(value, str):
            return np.full(n, vocabulary.setdefault(value, len(vocabulary)), dtype=np.int16)
        distinct, inverse = np.unique(np.asarray(value), return_inverse=True)
        codes = np.array([vocabulary.setdefault(str(v), len(vocabulary)) for v in distinct])
        return codes[inverse].astype(np.int16)

    def add(self, **columns: Any) -> None:
        n = len(columns["row"])
        if not n:
            return
        part = {}
        for name, default in self.defaults.items():
            value = columns.get(name, default)
            if name in self.labels:
                part[name] = self._code(name, value, n)
            elif np.ndim(value) == 0:
                part[name] = np.full(n, value)
            else:
                part[name] = np.asarray(value)
        self.parts.append(part)

    def build(self) -> dict[str, npt.NDArray[Any]]:
        """All parts, sorted by registration row then by `order_by`."""
        if not self.parts:
            return {
                name: np.array([], dtype=np.int16 if name in self.labels else np.asarray(d).dtype)
                for name, d in self.defaults.items()
            }
        cols = {name: np.concatenate([p[name] for p in self.parts]) for name in self.defaults}
        order = np.lexsort((cols[self.order_by], cols["row"]))
        return {name: col[order] for name, col in cols.items()}

    def strings(
        self, name: str, codes: npt.NDArray[np.int16], empty_is_null: bool = True
    ) -> pa.Array:
        """A text column as an Arrow string array ('' becomes null unless told otherwise)."""
        vocabulary = list(self.labels[name])
        values = pa.array(
            [None if (v == "" and empty_is_null) else v for v in vocabulary], type=pa.string()
        )
        return values.take(pa.array(codes.astype(np.int32)))


@dataclass
class Block:
    """The registrations of one practice being generated together, with the person facts needed."""

    nation: Nation
    practice: Practice
    regs: IntArray  # registration indices (into nation.registrations)
    first_patient_id: int

    def __post_init__(self) -> None:
        r = self.nation.registrations
        people = self.nation.people
        config = self.nation.config
        self.person = r.person[self.regs]
        self.reg_start = r.start[self.regs]
        self.reg_end = r.end[self.regs]
        # The last day this practice holds the record for: the registration's end, or the extract.
        self.last_day = np.where(self.reg_end == NO_DATE, config.as_of_day, self.reg_end).astype(
            np.int32
        )
        self.birth = people.birth[self.person]
        # The part of the registration inside the history window: where episodes can happen.
        self.first = np.maximum(self.reg_start, config.window_start_day).astype(np.int32)
        self.sex = people.sex[self.person]
        self.patient_id = self.first_patient_id + np.arange(len(self.regs), dtype=np.int64)

    def __len__(self) -> int:
        return len(self.regs)

    def age_on(self, day: Days | int, rows: IntArray | None = None) -> FloatArray:
        birth = self.birth if rows is None else self.birth[rows]
        return np.asarray((np.asarray(day) - birth) / YEAR, dtype=np.float64)


def _poisson_days(
    rng: np.random.Generator, lo: Days, hi: Days, rate_per_year: FloatArray | float
) -> tuple[IntArray, Days]:
    """Events of a Poisson process between lo and hi (inclusive) for each row: (row, day)."""
    span = np.maximum(hi.astype(np.int64) - lo + 1, 0)
    counts = rng.poisson(np.asarray(rate_per_year) * span / YEAR)
    rows = np.repeat(np.arange(len(lo)), counts)
    days = lo[rows] + np.floor(rng.random(len(rows)) * span[rows]).astype(np.int32)
    return rows.astype(np.int64), days.astype(np.int32)


def _recurring_days(
    rng: np.random.Generator, lo: Days, hi: Days, interval: int, jitter: int = 7
) -> tuple[IntArray, Days]:
    """Issues every `interval` days (give or take `jitter`) from lo to hi for each row."""
    span = hi.astype(np.int64) - lo
    counts = np.where(span >= 0, span // interval + 1, 0)
    rows = np.repeat(np.arange(len(lo)), counts)
    starts = np.cumsum(counts) - counts
    nth = np.arange(len(rows)) - np.repeat(starts, counts)
    days = lo[rows] + nth * interval + rng.integers(-jitter, jitter + 1, size=len(rows))
    days = np.clip(days, lo[rows], hi[rows])
    return rows.astype(np.int64), days.astype(np.int32)


def _pick(rng: np.random.Generator, options: IntArray, count: int) -> IntArray:
    """Codes for `count` records from a key's options: the first (most common) three times in
    four."""
    if len(options) == 1 or count == 0:
        return np.full(count, options[0], dtype=np.int64)
    other = options[1:][rng.integers(len(options) - 1, size=count)]
    return np.where(rng.random(count) < 0.75, options[0], other)


def _weights(shares: dict[str, float] | list[float]) -> FloatArray:
    values = np.array(list(shares.values()) if isinstance(shares, dict) else shares, dtype=float)
    return np.asarray(values / values.sum(), dtype=np.float64)


class Generator:
    """Draws one block's records. Methods add to the table builders in the order of the module
    docstring's rules; `tables()` finishes them into Arrow tables."""

    def __init__(self, block: Block, rng: np.random.Generator, mess_rate: float) -> None:
        self.b = block
        self.rng = rng
        self.mess_rate = mess_rate
        self.params: Params = block.nation.params
        self.snomed, self.dmd = vocabularies()
        self.events = Rows(
            {
                "row": -1,
                "category": "",
                "code": -1,
                "effective": 0,
                "recorded": 0,
                "value": np.nan,
                "unit": "",
                "role": GP,
            },
            order_by="effective",
        )
        self.medications = Rows(
            {
                "row": -1,
                "code": -1,
                "day": 0,
                "quantity": 0.0,
                "dosage": "",
                "course": "repeat",
                "source": "issued",
                "role": GP,
            },
            order_by="day",
        )
        self.immunisations = Rows({"row": -1, "procedure": -1, "vaccine": -1, "day": 0}, "day")
        self.allergies = Rows({"row": -1, "code": -1, "onset": 0, "recorded": 0}, "onset")
        self.appointments = Rows({"row": -1, "day": 0, "slot": 0}, "day")
        self.referrals = Rows({"row": -1, "code": -1, "day": 0}, "day")

    # ---- history: travels with the record ------------------------------------------------------

    def _history(self, days: Days) -> tuple[IntArray, Days, Days]:
        """Rows of the block whose record holds a person-level fact dated `days` (per block row,
        NO_DATE for none): (rows, effective day, recorded day)."""
        rows = np.flatnonzero((days != NO_DATE) & (days <= self.b.last_day))
        effective = days[rows]
        return rows, effective, np.maximum(effective, self.b.reg_start[rows]).astype(np.int32)

    def _episode_rows(self, days: Days) -> tuple[IntArray, Days]:
        rows = np.flatnonzero(
            (days != NO_DATE) & (days >= self.b.reg_start) & (days <= self.b.last_day)
        )
        return rows, days[rows]

    def diagnoses(self) -> None:
        people = self.b.nation.people
        for condition in self.params.conditions:
            rows, eff, rec = self._history(people.onset[condition.name][self.b.person])
            choice = people.condition_code[condition.name][self.b.person[rows]]
            code = _pick(self.rng, self.snomed.of(condition.codes), len(rows))
            for i, key in enumerate(condition.alternative_codes, start=1):
                alt = choice == i
                code[alt] = _pick(self.rng, self.snomed.of(key), int(alt.sum()))
            self.events.add(row=rows, category="condition", code=code, effective=eff, recorded=rec)

    def opt_out_codes(self) -> None:
        people = self.b.nation.people
        for key, days in (
            ("optout.type1_dissent", people.type1_dissent),
            ("optout.type1_withdrawn", people.type1_withdrawn),
        ):
            rows, eff, rec = self._history(days[self.b.person])
            self.events.add(
                row=rows,
                category="observation",
                code=self.snomed.first(key),
                effective=eff,
                recorded=rec,
            )

    def allergy_labels(self) -> None:
        for key, days in self.b.nation.people.allergy_onset.items():
            rows, eff, rec = self._history(days[self.b.person])
            self.allergies.add(
                row=rows,
                code=_pick(self.rng, self.snomed.of(key), len(rows)),
                onset=eff,
                recorded=rec,
            )

    def planted_episodes(self) -> None:
        """Restricted and sensitive codes. Gender reassignment is history; the rest are episodes."""
        people = self.b.nation.people
        plan = {
            "ivf": ("restricted.ivf", "procedure"),
            "gender_reassignment": ("restricted.gender_reassignment", "condition"),
            "sti": ("sensitive.sti", "condition"),
            "top": ("sensitive.top", "procedure"),
        }
        for name, (key, category) in plan.items():
            days = people.episodes[name][self.b.person]
            if name == "gender_reassignment":
                rows, eff, rec = self._history(days)
            else:
                rows, eff = self._episode_rows(days)
                rec = eff
            self.events.add(
                row=rows,
                category=category,
                code=_pick(self.rng, self.snomed.of(key), len(rows)),
                effective=eff,
                recorded=rec,
            )

    # ---- episodes: only where registered on the day ---------------------------------------------

    def demographics(self) -> None:
        """Ethnicity (usually at registration), sexual orientation, and smoking status."""
        b, people, params = self.b, self.b.nation.people, self.params
        ethnicity = people.ethnicity[b.person]
        rows = np.flatnonzero(ethnicity >= 0)
        day = np.minimum(b.first[rows] + self.rng.integers(0, 60, len(rows)), b.last_day[rows])
        keys = list(params.ethnicity)
        codes = np.array([self.snomed.first(k) for k in keys])[ethnicity[rows]]
        self.events.add(
            row=rows,
            category="observation",
            code=codes,
            effective=day.astype(np.int32),
            recorded=day.astype(np.int32),
        )

        orientation = people.sexual_orientation[b.person]
        adult_from = np.maximum(
            b.first, b.birth + round(params.sexual_orientation_min_age * YEAR)
        ).astype(np.int32)
        rows = np.flatnonzero((orientation >= 0) & (adult_from <= b.last_day))
        day = adult_from[rows] + np.floor(
            self.rng.random(len(rows)) * (b.last_day[rows] - adult_from[rows] + 1)
        ).astype(np.int32)
        keys = list(params.sexual_orientation)
        codes = np.array([self.snomed.first(k) for k in keys])[orientation[rows]]
        self.events.add(row=rows, category="observation", code=codes, effective=day, recorded=day)

        smoking = people.smoking[b.person]
        smoker_from = np.maximum(b.first, b.birth + round(params.smoking_min_age * YEAR)).astype(
            np.int32
        )
        eligible = smoking >= 0
        rows, day = _poisson_days(
            self.rng,
            smoker_from,
            np.where(eligible, b.last_day, smoker_from - 1).astype(np.int32),
            params.smoking_rate,
        )
        keys = list(params.smoking)
        codes = np.array([self.snomed.first(k) for k in keys])[smoking[rows]]
        self.events.add(
            row=rows, category="observation", code=codes, effective=day, recorded=day, role=NURSE
        )

    def treatments(self) -> None:
        people = self.b.nation.people
        for condition in self.params.conditions:
            for line, treatment in enumerate(condition.treatments):
                drug = people.treatment_drug[(condition.name, line)][self.b.person]
                start = people.treatment_start[(condition.name, line)][self.b.person]
                stop = people.treatment_stop[(condition.name, line)][self.b.person]
                treated = drug >= 0
                lo = np.maximum(start, self.b.first).astype(np.int32)
                hi = np.where(treated, np.minimum(stop, self.b.last_day), lo - 1).astype(np.int32)
                rows, days = _recurring_days(self.rng, lo, hi, treatment.interval_days)
                options = np.array([self.dmd.first(k) for k in treatment.drugs])
                self.medications.add(
                    row=rows,
                    code=options[drug[rows]],
                    day=days,
                    quantity=treatment.quantity,
                    dosage=treatment.dosage,
                    role=np.where(self.rng.random(len(rows)) < 0.85, GP, PHARMACIST),
                )

    def acute_problems(self) -> None:
        params = self.params
        rows, days = _poisson_days(self.rng, self.b.first, self.b.last_day, params.acute_rate)
        weights = _weights([p.weight for p in params.acute])
        which = self.rng.choice(len(params.acute), size=len(rows), p=weights)
        for i, problem in enumerate(params.acute):
            mine = which == i
            r, d = rows[mine], days[mine]
            self.events.add(
                row=r,
                category=problem.category,
                code=_pick(self.rng, self.snomed.of(problem.key), len(r)),
                effective=d,
                recorded=d,
            )
            if problem.drug:
                given = self.rng.random(len(r)) < problem.drug_probability
                self.medications.add(
                    row=r[given],
                    code=self.dmd.first(problem.drug),
                    day=d[given],
                    quantity=params.acute_quantity,
                    dosage=params.acute_dosage,
                    course="acute",
                )
        # A few medicines are recorded as taken but prescribed elsewhere (hospital, OTC).
        elsewhere = self.rng.random(len(rows)) < 0.02
        r, d = rows[elsewhere], days[elsewhere]
        self.medications.add(
            row=r,
            code=self.dmd.first("drug.omeprazole"),
            day=d,
            quantity=28.0,
            dosage="One to be taken once a day",
            course="acute",
            source="elsewhere",
        )

    def _rate_with_conditions(self, base: float, extra: dict[str, float]) -> FloatArray:
        people = self.b.nation.people
        rate = np.full(len(self.b), base)
        for name, add in extra.items():
            rate += add * (people.onset[name][self.b.person] <= self.b.last_day)
        return rate

    def observations(self) -> None:
        b, people = self.b, self.b.nation.people
        for group in self.params.observations:
            adult_from = np.maximum(b.first, b.birth + round(group.min_age * YEAR)).astype(np.int32)
            rate = self._rate_with_conditions(group.rate_per_year, group.rate_if)
            rows, days = _poisson_days(self.rng, adult_from, b.last_day, rate)
            role = np.where(self.rng.random(len(rows)) < 0.7, NURSE, HCA)
            for measure in group.measures:
                base = people.baseline[measure.code][b.person[rows]]
                self.events.add(
                    row=rows,
                    category="observation",
                    code=self.snomed.first(measure.code),
                    effective=days,
                    recorded=days,
                    value=self._measured(measure, base),
                    unit=measure.unit,
                    role=role,
                )

    def _measured(self, measure: Measure, baseline: npt.NDArray[np.float32]) -> FloatArray:
        value = baseline + self.rng.standard_normal(len(baseline)) * measure.within_sd
        clipped = np.clip(value.astype(np.float64), measure.minimum, measure.maximum)
        return np.asarray(np.round(clipped, measure.decimals), dtype=np.float64)

    def immunisation_programmes(self) -> None:
        self._flu()
        self._covid()
        self._pneumococcal()

    def _add_vaccination(
        self, rows: IntArray, days: Days, procedure: str, vaccine: IntArray
    ) -> None:
        held = (days >= self.b.reg_start[rows]) & (days <= self.b.last_day[rows])
        rows, days, vaccine = rows[held], days[held], vaccine[held]
        self.immunisations.add(
            row=rows,
            procedure=_pick(self.rng, self.snomed.of(procedure), len(rows)),
            vaccine=vaccine,
            day=days,
        )

    def _flu(self) -> None:
        b, cfg = self.b, self.params.immunisations
        people = b.nation.people
        month, day = cfg["flu_season_start"]
        uptake = cfg["flu_uptake"]
        window = from_days(b.nation.config.window_start_day)
        as_of = b.nation.config.as_of_day
        for year in range(window.year, from_days(as_of).year + 1):
            opens = to_days(date(year, month, day))
            if opens > as_of or opens < b.nation.config.window_start_day:
                continue
            age = b.age_on(opens)
            at_risk = np.zeros(len(b), dtype=bool)
            for name in cfg["flu_at_risk"]:
                at_risk |= people.onset[name][b.person] <= opens
            chance = np.where(
                age >= 65,
                uptake["age_65_plus"],
                np.where(
                    at_risk & (age >= 18),
                    uptake["at_risk"],
                    np.where((age >= 2) & (age < 4), uptake["age_2_to_3"], 0.0),
                ),
            )
            rows = np.flatnonzero(self.rng.random(len(b)) < chance)
            days = (opens + self.rng.integers(0, cfg["flu_season_days"], len(rows))).astype(
                np.int32
            )
            days = np.minimum(days, as_of).astype(np.int32)
            old = age[rows] >= 65
            child = age[rows] < 4
            vaccine = np.where(
                old,
                self.dmd.first("vacc.flu_adjuvanted"),
                np.where(
                    child,
                    self.dmd.first("vacc.flu_live_nasal"),
                    _pick(self.rng, self.dmd.of("vacc.flu_inactivated"), len(rows)),
                ),
            )
            self._add_vaccination(rows, days, "imm.flu_procedure", vaccine)

    def _covid(self) -> None:
        b, cfg = self.b, self.params.immunisations
        as_of = b.nation.config.as_of_day
        first_day = to_days(date.fromisoformat(cfg["covid_first_dose_from"]))
        if first_day > as_of:
            return
        age = b.age_on(first_day)
        uptake = cfg["covid_uptake"]
        chance = np.where(
            age >= 75,
            uptake["age_75_plus"],
            np.where(
                age >= 50, uptake["age_50_to_74"], np.where(age >= 18, uptake["age_18_to_49"], 0.0)
            ),
        )
        rows = np.flatnonzero(self.rng.random(len(b)) < chance)
        # The oldest were invited first: 75+ from December, 50-74 from February, others from April.
        wait = np.where(age[rows] >= 75, 0, np.where(age[rows] >= 50, 60, 120))
        dose1 = (first_day + wait + self.rng.integers(0, 60, len(rows))).astype(np.int32)
        dose2 = (dose1 + self.rng.integers(56, 85, len(rows))).astype(np.int32)
        first_two = self.rng.choice(
            [
                self.dmd.first("vacc.covid_pfizer"),
                self.dmd.first("vacc.covid_astrazeneca"),
                self.dmd.first("vacc.covid_moderna"),
            ],
            size=len(rows),
            p=[0.55, 0.35, 0.10],
        )
        for procedure, days in (("imm.covid_dose1", dose1), ("imm.covid_dose2", dose2)):
            keep = days <= as_of
            self._add_vaccination(rows[keep], days[keep], procedure, first_two[keep])
        for opened, min_age in cfg["covid_boosters"]:
            opens = to_days(date.fromisoformat(opened))
            if opens > as_of:
                continue
            eligible = rows[b.age_on(opens, rows) >= min_age]
            boosted = eligible[self.rng.random(len(eligible)) < cfg["covid_booster_uptake"]]
            days = np.minimum(opens + self.rng.integers(0, 90, len(boosted)), as_of).astype(
                np.int32
            )
            vaccine = self.rng.choice(
                [self.dmd.first("vacc.covid_pfizer"), self.dmd.first("vacc.covid_moderna")],
                size=len(boosted),
                p=[0.6, 0.4],
            )
            self._add_vaccination(boosted, days, "imm.covid_booster", vaccine)

    def _pneumococcal(self) -> None:
        b, cfg = self.b, self.params.immunisations
        turns = (b.birth + round(cfg["pneumococcal_age"] * YEAR)).astype(np.int32)
        days = (turns + self.rng.integers(0, 365, len(b))).astype(np.int32)
        rows = np.flatnonzero(
            (self.rng.random(len(b)) < cfg["pneumococcal_uptake"])
            & (days >= b.first)
            & (days <= b.last_day)
        )
        self._add_vaccination(
            rows,
            days[rows],
            "imm.pneumococcal_procedure",
            np.full(len(rows), self.dmd.first("vacc.pneumococcal")),
        )

    def appointments_and_referrals(self) -> None:
        b, params, people = self.b, self.params, self.b.nation.people
        cfg = params.appointments
        conditions = np.zeros(len(b))
        for condition in params.conditions:
            conditions += people.onset[condition.name][b.person] <= b.last_day
        rate = (cfg["rate_per_year"] + cfg["extra_per_condition"] * conditions) * np.where(
            b.age_on(b.last_day) >= 65, cfg["older_multiplier"], 1.0
        )
        rows, days = _poisson_days(self.rng, b.first, b.last_day, rate)
        # Appointments already booked for the fortnight after the extract, for current patients.
        as_of = b.nation.config.as_of_day
        current = b.reg_end == NO_DATE
        future_rows, future_days = _poisson_days(
            self.rng,
            np.full(len(b), as_of + 1, np.int32),
            np.where(current, as_of + 14, as_of).astype(np.int32),
            rate,
        )
        rows = np.concatenate([rows, future_rows])
        days = np.concatenate([days, future_days])
        slot = self.rng.integers(0, 60, len(rows))  # ten-minute slots from 08:00
        self.appointments.add(row=rows, day=days, slot=slot)

        rcfg = params.referrals
        rows, days = _poisson_days(self.rng, b.first, b.last_day, rcfg["rate_per_year"])
        keys = [k for k, _ in rcfg["specialties"]]
        which = self.rng.choice(
            len(keys), size=len(rows), p=_weights([w for _, w in rcfg["specialties"]])
        )
        codes = np.array([self.snomed.first(k) for k in keys])[which]
        self.referrals.add(row=rows, code=codes, day=days)


def generate_block(block: Block, rng: np.random.Generator, mess_rate: float) -> Generator:
    """Draw every kind of record for one block; finish.finish_block turns them into tables."""
    gen = Generator(block, rng, mess_rate)
    gen.diagnoses()
    gen.opt_out_codes()
    gen.allergy_labels()
    gen.planted_episodes()
    gen.demographics()
    gen.treatments()
    gen.acute_problems()
    gen.observations()
    gen.immunisation_programmes()
    gen.appointments_and_referrals()
    return gen
