"""The synthetic nation: its people, their lives, and where they were registered.

Everything that belongs to a person rather than to a practice is decided here, once: age, sex,
identity, conditions and when they began, treatment choices, opt-out dissent, planted sensitive
episodes. A person who moves between practices is therefore the same person at both. What happens
during each registration (visits, issues, measurements) is drawn later, practice by practice, in
records.py.

Dates are int32 days since 1970-01-01 throughout; NO_DATE means "never".
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import date

import numpy as np
import numpy.typing as npt

from gpdpr.identifiers import TEST_RANGE_CAPACITY, draw_test_nhs_numbers
from gpdpr.synth.geography import Geography, load_geography
from gpdpr.synth.params import Params, load_params

Days = npt.NDArray[np.int32]
IntArray = npt.NDArray[np.int64]
NO_DATE = np.int32(np.iinfo(np.int32).max)
YEAR = 365.25
EPOCH = date(1970, 1, 1)

SEXES = np.array(["F", "M", "U"])  # recorded sex: female, male, indeterminate/unknown
FEMALE, MALE, OTHER = 0, 1, 2
END_REASONS = np.array(["", "moved", "death", "left"])
MOVED, DIED, LEFT = 1, 2, 3
# Synthetic practices take ODS-shaped codes Z10001..Z99999: no real practice code starts with Z.
#
FIRST_ODS_NUMBER = 10001
MAX_PRACTICES = 99999 - FIRST_ODS_NUMBER + 1
MIN_MEAN_LIST_SIZE = 20  # a practice needs people; below this the nation is not a nation
CATCHMENT_AREAS = 6  # small areas around a practice that its patients live in
# Ofcom's numbers reserved for drama: never connected to a real line.
DRAMA_PHONE_PREFIXES = np.array(
    [
        "07700 900",
        "020 7946 0",
        "0161 496 0",
        "0113 496 0",
        "0121 496 0",
        "0117 496 0",
        "0191 498 0",
        "01632 960",
    ]
)
EMAIL_DOMAINS = np.array(["example.com", "example.org", "example.net"])  # RFC 2606 reserved


def to_days(day: date) -> int:
    return (day - EPOCH).days


def from_days(days: int) -> date:
    return date.fromordinal(EPOCH.toordinal() + int(days))


@dataclass(frozen=True)
class NationConfig:
    practices: int
    patients: int  # patient records across all practices (a person who moved counts twice)
    seed: int
    as_of: date
    history_years: int = 15

    @property
    def as_of_day(self) -> int:
        return to_days(self.as_of)

    @property
    def window_start_day(self) -> int:
        return self.as_of_day - round(self.history_years * YEAR)

    def people_and_moves(self, mover_share: float) -> tuple[int, int]:
        """How many distinct people, and how many of them move, to make `patients` records."""
        share = mover_share if self.practices > 1 else 0.0
        movers = round(self.patients * share / (1 + share))
        return self.patients - movers, movers


def check_config(config: NationConfig) -> None:
    """Refuse a nation that cannot be made, before anything is written."""
    if config.practices < 1:
        raise ValueError(f"--practices must be at least 1 (got {config.practices})")
    if config.practices > MAX_PRACTICES:
        raise ValueError(f"--practices can be at most {MAX_PRACTICES:,} (got {config.practices:,})")
    if config.patients < 1:
        raise ValueError(f"--patients must be at least 1 (got {config.patients})")
    if config.patients < MIN_MEAN_LIST_SIZE * config.practices:
        raise ValueError(
            f"--patients {config.patients:,} is too few for {config.practices:,} practices: "
            f"give at least {MIN_MEAN_LIST_SIZE} patients per practice "
            f"(--patients {MIN_MEAN_LIST_SIZE * config.practices:,} or more)"
        )
    if config.seed < 0:
        raise ValueError(f"--seed must be zero or positive (got {config.seed})")
    people, _ = config.people_and_moves(load_params().mover_share)
    if people > TEST_RANGE_CAPACITY:
        raise ValueError(
            f"--patients {config.patients:,} needs {people:,} distinct people, but synthetic NHS "
            f"numbers come only from the 999 test range, which holds {TEST_RANGE_CAPACITY:,}; "
            "generate a smaller nation"
        )


@dataclass
class StaffMember:
    staff_id: int
    role: str
    given_name: str
    family_name: str
    professional_code: str  # GMC number for GPs, NMC PIN for nurses, "" otherwise
    sds_user_id: str


@dataclass
class Practice:
    index: int
    ods_code: str
    name: str
    region_code: str
    postcode_index: int
    address_line: str
    catchment: IntArray  # postcode indices its patients live at
    staff: list[StaffMember] = field(default_factory=list)

    def staff_ids(self, role: str) -> IntArray:
        ids = [s.staff_id for s in self.staff if s.role == role]
        return np.array(ids or [s.staff_id for s in self.staff], dtype=np.int64)


@dataclass
class People:
    """Person-level facts, one entry per person."""

    nhs_number: IntArray
    sex: npt.NDArray[np.int8]
    birth: Days
    end_of_life: Days  # last day in the nation: the extract date, death, or leaving
    fate: npt.NDArray[np.int8]  # 0 alive at the extract date, DIED, LEFT
    given: IntArray
    family: IntArray
    title: IntArray
    phone: npt.NDArray[np.str_]  # "" when none recorded
    email: npt.NDArray[np.str_]
    ethnicity: IntArray  # index into params.ethnicity keys, -1 not recorded
    sexual_orientation: IntArray  # index into params.sexual_orientation keys, -1 not recorded
    smoking: IntArray  # index into params.smoking keys, -1 child
    onset: dict[str, Days]  # condition name -> onset day or NO_DATE
    condition_code: dict[str, IntArray]  # condition name -> index into its code options
    treatment_drug: dict[tuple[str, int], IntArray]  # (condition, line) -> drug index or -1
    treatment_start: dict[tuple[str, int], Days]  # (condition, line) -> first issue or NO_DATE
    treatment_stop: dict[tuple[str, int], Days]
    baseline: dict[str, npt.NDArray[np.float32]]  # measure code key -> personal baseline
    allergy_onset: dict[str, Days]  # allergy key -> onset day or NO_DATE
    episodes: dict[str, Days]  # planted episode name -> day or NO_DATE
    type1_dissent: Days
    type1_withdrawn: Days

    def __len__(self) -> int:
        return len(self.nhs_number)

    def has(self, condition: str) -> npt.NDArray[np.bool_]:
        return np.asarray(self.onset[condition] != NO_DATE, dtype=np.bool_)


@dataclass
class Registrations:
    """One entry per patient record (a person at a practice for a period)."""

    person: IntArray
    practice: IntArray
    start: Days
    end: Days  # NO_DATE while registered
    end_reason: npt.NDArray[np.int8]
    temporary: npt.NDArray[np.bool_]
    postcode: IntArray  # index into the geography
    house_number: IntArray
    street: IntArray  # index into street names

    def __len__(self) -> int:
        return len(self.person)


@dataclass
class Nation:
    config: NationConfig
    params: Params
    geography: Geography
    practices: list[Practice]
    people: People
    registrations: Registrations
    streets: npt.NDArray[np.str_]


def _years(n: float | npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    return np.round(np.asarray(n) * YEAR).astype(np.int32)


def _uniform_days(rng: np.random.Generator, lo: Days, hi: Days) -> Days:
    """A day uniformly in [lo, hi] (hi >= lo assumed)."""
    span = np.maximum(hi.astype(np.int64) - lo, 0)
    return np.asarray(lo + np.floor(rng.random(len(lo)) * (span + 1)), dtype=np.int32)


def _ages_and_sexes(
    rng: np.random.Generator, params: Params, count: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    """Age in fractional years and sex, following England's age/sex structure."""
    weights = params.age_counts.ravel() / params.age_counts.sum()
    cell = rng.choice(len(weights), size=count, p=weights)
    band, sex = np.divmod(cell, 2)
    starts = params.age_bands[band].astype(np.float64)
    ends = np.append(params.age_bands[1:], params.oldest)[band].astype(np.float64)
    top = band == len(params.age_bands) - 1
    # Survival falls steeply past 90: draw the oldest band from a decaying tail, not uniformly.
    offset = np.where(top, rng.exponential(3.5, count), rng.random(count) * (ends - starts))
    age = np.minimum(starts + offset, params.oldest - 0.01)
    sexes = sex.astype(np.int8)
    sexes[rng.random(count) < params.other_sex_share] = OTHER
    return age, sexes


def _age_table(params: Params) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Single years of age 0..oldest-1 and the female/male counts in each."""
    ages = np.arange(params.oldest, dtype=np.float64)
    counts = np.zeros((params.oldest, 2))
    edges = [*params.age_bands.tolist(), params.oldest]
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        if i == len(edges) - 2:
            shape = np.exp(-np.arange(hi - lo) / 3.5)
            counts[lo:hi] = params.age_counts[i] * (shape / shape.sum())[:, None]
        else:
            counts[lo:hi] = params.age_counts[i] / (hi - lo)
    return ages + 0.5, counts


def condition_probability(
    params: Params, name: str, age: npt.NDArray[np.float64], sex: npt.NDArray[np.int8]
) -> npt.NDArray[np.float64]:
    """Chance of carrying the condition at `age`, calibrated so that across England's age/sex
    structure the share of the base population with it equals the published prevalence."""
    condition = params.condition(name)
    mid_ages, counts = _age_table(params)
    in_base = mid_ages >= condition.base_min_age
    risk = condition.relative_risk(mid_ages)
    expected = (risk * condition.female_ratio * counts[:, FEMALE] + risk * counts[:, MALE])[
        in_base
    ].sum() / counts[in_base].sum()
    scale = condition.prevalence / expected
    sex_factor = np.where(sex == FEMALE, condition.female_ratio, 1.0)
    return np.asarray(
        np.clip(scale * condition.relative_risk(age) * sex_factor, 0.0, 0.95), dtype=np.float64
    )


def _draw_people(
    rng: np.random.Generator, config: NationConfig, params: Params, count: int
) -> People:
    as_of, window = config.as_of_day, config.window_start_day
    fate = np.zeros(count, dtype=np.int8)
    fates = rng.permutation(count)
    n_died = round(count * params.death_share)
    n_left = round(count * params.leaver_share)
    fate[fates[:n_died]] = DIED
    fate[fates[n_died : n_died + n_left]] = LEFT

    # Living people follow England's structure on the extract date; the dead and the departed are
    # drawn by their age when they left the nation.
    age, sex = _ages_and_sexes(rng, params, count)
    end_of_life = np.full(count, as_of, dtype=np.int32)
    leaving = fate != 0
    end_of_life[leaving] = _uniform_days(
        rng, np.full(leaving.sum(), window, np.int32), np.full(leaving.sum(), as_of - 1, np.int32)
    )
    died = np.flatnonzero(fate == DIED)
    bands = np.array([(a, b) for a, b, _ in params.age_at_death], dtype=np.float64)
    shares = np.array([s for *_, s in params.age_at_death])
    pick = rng.choice(len(shares), size=len(died), p=shares / shares.sum())
    age[died] = bands[pick, 0] + rng.random(len(died)) * (bands[pick, 1] - bands[pick, 0])
    left = np.flatnonzero(fate == LEFT)
    lo, hi = params.leaver_ages
    age[left] = lo + rng.random(len(left)) * (hi - lo)
    birth = (end_of_life - np.round(age * YEAR)).astype(np.int32)
    birth = np.minimum(birth, end_of_life - 1)

    names = params.names
    female = sex == FEMALE
    given = np.where(
        female,
        rng.integers(len(names["female"]), size=count),
        rng.integers(len(names["male"]), size=count),
    )
    title = rng.integers(4, size=count)
    family = rng.integers(len(names["surnames"]), size=count)
    phone = np.char.add(
        DRAMA_PHONE_PREFIXES[rng.integers(len(DRAMA_PHONE_PREFIXES), size=count)],
        np.char.zfill(rng.integers(1000, size=count).astype(str), 3),
    )
    phone[rng.random(count) >= params.phone_recorded] = ""
    email = _emails(rng, params, given, family, female, count)

    ages_now = (end_of_life - birth) / YEAR
    ethnicity = _categorical(rng, params.ethnicity, count)
    ethnicity[rng.random(count) >= params.ethnicity_recorded] = -1
    orientation = _categorical(rng, params.sexual_orientation, count)
    orientation[
        (rng.random(count) >= params.sexual_orientation_recorded)
        | (ages_now < params.sexual_orientation_min_age)
    ] = -1
    smoking = _categorical(rng, params.smoking, count)
    smoking[ages_now < params.smoking_min_age] = -1

    people = People(
        nhs_number=draw_test_nhs_numbers(rng, count),
        sex=sex,
        birth=birth,
        end_of_life=end_of_life,
        fate=fate,
        given=given,
        family=family,
        title=title,
        phone=phone,
        email=email,
        ethnicity=ethnicity,
        sexual_orientation=orientation,
        smoking=smoking,
        onset={},
        condition_code={},
        treatment_drug={},
        treatment_start={},
        treatment_stop={},
        baseline={},
        allergy_onset={},
        episodes={},
        type1_dissent=np.full(count, NO_DATE, np.int32),
        type1_withdrawn=np.full(count, NO_DATE, np.int32),
    )
    _draw_conditions(rng, params, people, ages_now)
    _draw_baselines(rng, params, people)
    _draw_allergies(rng, params, people)
    _draw_planted_episodes(rng, config, params, people)
    _draw_type1(rng, params, people)
    return people


def _emails(
    rng: np.random.Generator,
    params: Params,
    given: IntArray,
    family: IntArray,
    female: npt.NDArray[np.bool_],
    count: int,
) -> npt.NDArray[np.str_]:
    first = np.where(
        female,
        np.array(params.names["female"])[np.minimum(given, len(params.names["female"]) - 1)],
        np.array(params.names["male"])[np.minimum(given, len(params.names["male"]) - 1)],
    )
    last = np.char.replace(
        np.char.replace(np.array(params.names["surnames"])[family], " ", ""), "'", ""
    )
    local = np.char.lower(np.char.add(np.char.add(first, "."), last))
    local = np.char.add(local, rng.integers(10, 99, size=count).astype(str))
    email = np.char.add(np.char.add(local, "@"), EMAIL_DOMAINS[rng.integers(3, size=count)])
    email[rng.random(count) >= params.email_recorded] = ""
    return email


def _categorical(rng: np.random.Generator, shares: dict[str, float], count: int) -> IntArray:
    weights = np.array(list(shares.values()))
    return rng.choice(len(weights), size=count, p=weights / weights.sum()).astype(np.int64)


def _draw_conditions(
    rng: np.random.Generator, params: Params, people: People, ages_now: npt.NDArray[np.float64]
) -> None:
    count = len(people)
    for condition in params.conditions:
        chance = condition_probability(params, condition.name, ages_now, people.sex)
        has = rng.random(count) < chance
        # Onset somewhere in the last 25 years of life, after the condition can begin.
        earliest = np.maximum(
            people.birth + _years(condition.min_onset_age), people.end_of_life - _years(25)
        )
        onset = _uniform_days(rng, earliest, people.end_of_life)
        people.onset[condition.name] = np.where(has, onset, NO_DATE).astype(np.int32)
        alternatives = list(condition.alternative_codes.values())
        code_choice = np.zeros(count, dtype=np.int64)
        for i, share in enumerate(alternatives, start=1):
            code_choice[rng.random(count) < share] = i
        people.condition_code[condition.name] = code_choice
        for line, treatment in enumerate(condition.treatments):
            treated = has & (rng.random(count) < treatment.probability)
            drug = rng.choice(len(treatment.drugs), size=count, p=treatment.weights)
            lo, hi = treatment.start_after_days
            start = onset + rng.integers(lo, hi + 1, size=count).astype(np.int32)
            if treatment.course_days:
                c_lo, c_hi = treatment.course_days
                stop = start + rng.integers(c_lo, c_hi + 1, size=count).astype(np.int32)
            else:
                # Most continue; some stop (side effects, resolution) part-way.
                stops = rng.random(count) < 0.15
                stop = np.where(
                    stops, start + rng.integers(90, 1500, size=count).astype(np.int32), NO_DATE
                )
            people.treatment_drug[(condition.name, line)] = np.where(treated, drug, -1)
            people.treatment_start[(condition.name, line)] = np.where(
                treated, start, NO_DATE
            ).astype(np.int32)
            people.treatment_stop[(condition.name, line)] = np.minimum(
                stop, people.end_of_life
            ).astype(np.int32)


def _draw_baselines(rng: np.random.Generator, params: Params, people: People) -> None:
    count = len(people)
    for group in params.observations:
        for measure in group.measures:
            mean = np.full(count, measure.mean)
            spread = np.full(count, measure.between_sd)
            for name, value in measure.mean_if.items():
                mean = np.where(people.has(name), value, mean)
            for name, value in measure.between_sd_if.items():
                spread = np.where(people.has(name), value, spread)
            people.baseline[measure.code] = (mean + rng.standard_normal(count) * spread).astype(
                np.float32
            )


def _draw_allergies(rng: np.random.Generator, params: Params, people: People) -> None:
    count = len(people)
    for key, share in params.allergies:
        has = rng.random(count) < share
        onset = _uniform_days(rng, people.birth, people.end_of_life)
        people.allergy_onset[key] = np.where(has, onset, NO_DATE).astype(np.int32)


def _draw_planted_episodes(
    rng: np.random.Generator, config: NationConfig, params: Params, people: People
) -> None:
    """Restricted and sensitive episodes: a chosen share of all people, among those of the right
    sex who were of the right age at some point in the history window."""
    count = len(people)
    for name, episode in {**params.restricted, **params.sensitive}.items():
        lo = np.maximum(people.birth + _years(episode.ages[0]), config.window_start_day)
        hi = np.minimum(people.birth + _years(episode.ages[1]), people.end_of_life)
        eligible = hi > lo
        if episode.sex:
            eligible &= SEXES[people.sex] == episode.sex
        candidates = np.flatnonzero(eligible)
        chosen = rng.permutation(candidates)[: min(len(candidates), round(episode.share * count))]
        days = np.full(count, NO_DATE, np.int32)
        days[chosen] = _uniform_days(rng, lo[chosen], hi[chosen])
        people.episodes[name] = days


def _draw_type1(rng: np.random.Generator, params: Params, people: People) -> None:
    count = len(people)
    chosen = rng.permutation(count)[: round(params.type1_share * count)]
    first = np.int32(to_days(params.type1_first_possible))
    lo = np.maximum(people.birth[chosen], first)
    hi = people.end_of_life[chosen]
    ok = hi > lo
    chosen, lo, hi = chosen[ok], lo[ok], hi[ok]
    dissent = _uniform_days(rng, lo, hi)
    people.type1_dissent[chosen] = dissent
    withdraws = rng.random(len(chosen)) < params.type1_withdrawn_share
    later = dissent + 1 < hi
    who = chosen[withdraws & later]
    people.type1_withdrawn[who] = _uniform_days(
        rng, dissent[withdraws & later] + 1, hi[withdraws & later]
    )


def _draw_registrations(
    rng: np.random.Generator, config: NationConfig, params: Params, people: People, movers: int
) -> tuple[IntArray, Days, Days, npt.NDArray[np.int8]]:
    """Registration periods: (person, start, end, end reason), movers contributing two."""
    count = len(people)
    window, as_of = config.window_start_day, config.as_of_day
    birth, life_end = people.birth, people.end_of_life
    newborn = birth >= window
    lo_delay, hi_delay = params.newborn_delay_days
    at_birth = birth + rng.integers(lo_delay, hi_delay + 1, size=count).astype(np.int32)
    earliest = np.maximum(birth, as_of - _years(40)).astype(np.int32)
    before_window = _uniform_days(rng, earliest, np.full(count, window, np.int32))
    during = _uniform_days(rng, np.full(count, window, np.int32), life_end)
    joined_early = rng.random(count) < params.joined_before_window
    start = np.where(newborn, at_birth, np.where(joined_early, before_window, during))
    start = np.clip(start, birth, np.maximum(life_end - 1, birth)).astype(np.int32)

    end = np.where(people.fate == 0, NO_DATE, life_end).astype(np.int32)
    reason = np.where(people.fate == DIED, DIED, np.where(people.fate == LEFT, LEFT, 0)).astype(
        np.int8
    )

    # Movers: a period long enough to split around a move and a re-registration gap.
    in_window_from = np.maximum(start, window)
    gap_lo, gap_hi = params.move_gap_days
    can_move = np.flatnonzero(life_end - in_window_from > 2 * gap_hi + 120)
    moving = np.sort(rng.permutation(can_move)[: min(movers, len(can_move))])
    move_day = _uniform_days(rng, in_window_from[moving] + 30, life_end[moving] - gap_hi - 60)
    second_start = move_day + rng.integers(gap_lo, gap_hi + 1, size=len(moving)).astype(np.int32)

    person = np.concatenate([np.arange(count), moving])
    starts = np.concatenate([start, second_start])
    ends = np.concatenate([end, end[moving]])
    reasons = np.concatenate([reason, reason[moving]])
    ends[moving] = move_day  # the first registration ends at the move
    reasons[moving] = MOVED
    return person.astype(np.int64), starts.astype(np.int32), ends.astype(np.int32), reasons


def _list_sizes(rng: np.random.Generator, params: Params, practices: int, records: int) -> IntArray:
    """List sizes around the mean with England's spread, summing exactly to `records`."""
    sigma2 = np.log1p(params.list_size_cv**2)
    raw = rng.lognormal(-sigma2 / 2, np.sqrt(sigma2), size=practices)
    raw = np.maximum(raw, params.smallest_share_of_mean)
    exact = raw / raw.sum() * records
    sizes = np.maximum(np.floor(exact).astype(np.int64), 1)
    short = records - sizes.sum()
    order = np.argsort(-(exact - np.floor(exact)))
    if short > 0:
        sizes[order[:short]] += 1
    while sizes.sum() > records:  # only when the minimum of 1 forced sizes up
        sizes[np.argmax(sizes)] -= 1
    return np.asarray(sizes, dtype=np.int64)


def _assign_practices(
    rng: np.random.Generator, sizes: IntArray, person: IntArray, people_count: int
) -> IntArray:
    """Give each registration a practice so that list sizes are exact and nobody who moves
    re-registers at the practice they left."""
    practice = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    first_of_mover = person[people_count:]  # second registrations follow all first ones
    second = np.arange(people_count, len(person))
    for _ in range(1000):
        clash = second[practice[second] == practice[first_of_mover]]
        if len(clash) == 0:
            break
        partner = rng.integers(len(practice), size=len(clash))
        practice[clash], practice[partner] = practice[partner], practice[clash].copy()
    return practice


def _make_practices(
    rng: np.random.Generator, params: Params, geography: Geography, sizes: IntArray
) -> list[Practice]:
    names = params.names
    region_pick = rng.choice(
        len(geography.region_codes), size=len(sizes), p=geography.region_shares
    )
    practices: list[Practice] = []
    staff_id = 1000
    for index, size in enumerate(sizes):
        region = geography.region_codes[region_pick[index]]
        rows = geography.postcodes_in_region(region)
        region_lsoas = np.unique(geography.lsoa_code[rows])
        home = int(rng.integers(len(region_lsoas)))
        catchment_lsoas = region_lsoas[(home + np.arange(CATCHMENT_AREAS)) % len(region_lsoas)]
        catchment = rows[np.isin(geography.lsoa_code[rows], catchment_lsoas)]
        postcode = int(catchment[rng.integers(len(catchment))])
        stem = names["street_stems"][rng.integers(len(names["street_stems"]))]
        kind = names["street_kinds"][rng.integers(len(names["street_kinds"]))]
        prefix = names["practice_prefixes"][rng.integers(len(names["practice_prefixes"]))]
        word = names["practice_words"][rng.integers(len(names["practice_words"]))]
        practice = Practice(
            index=index,
            ods_code=f"Z{FIRST_ODS_NUMBER + index}",
            name=f"{prefix} {word}",
            region_code=region,
            postcode_index=postcode,
            address_line=f"{rng.integers(1, 120)} {stem} {kind}",
            catchment=catchment.astype(np.int64),
        )
        staff_id = _make_staff(rng, params, practice, int(size), staff_id)
        practices.append(practice)
    return practices


def _make_staff(
    rng: np.random.Generator, params: Params, practice: Practice, size: int, next_id: int
) -> int:
    names = params.names
    roles = (
        ["GP"] * max(1, round(size / params.patients_per_gp))
        + ["Practice nurse"] * max(1, round(size / params.patients_per_nurse))
        + ["Healthcare assistant"]
        + (["Clinical pharmacist"] if size >= 5000 else [])
    )
    for role in roles:
        female = rng.random() < 0.55
        given_list = names["female" if female else "male"]
        if role == "GP":
            code = f"9{rng.integers(0, 999_999):06d}"  # GMC numbers are 7 digits; 9xxxxxx unused
        elif role == "Practice nurse":
            year = rng.integers(90, 100)
            letters = [chr(65 + int(i)) for i in rng.integers(26, size=2)]
            code = f"{year}{letters[0]}{rng.integers(0, 9999):04d}{letters[1]}"  # NMC PIN shape
        else:
            code = ""
        practice.staff.append(
            StaffMember(
                staff_id=next_id,
                role=role,
                given_name=given_list[rng.integers(len(given_list))],
                family_name=names["surnames"][rng.integers(len(names["surnames"]))],
                professional_code=code,
                sds_user_id=f"9{rng.integers(0, 10**11):011d}",
            )
        )
        next_id += 1
    return next_id


def build_nation(config: NationConfig) -> Nation:
    check_config(config)
    params = load_params()
    geography = load_geography()
    # Independent streams, so adding a draw to one part does not reshuffle the others.
    streams = [np.random.default_rng(s) for s in np.random.SeedSequence(config.seed).spawn(4)]
    people_count, movers = config.people_and_moves(params.mover_share)
    people = _draw_people(streams[0], config, params, people_count)
    person, start, end, reason = _draw_registrations(streams[1], config, params, people, movers)
    sizes = _list_sizes(streams[2], params, config.practices, len(person))
    practice = _assign_practices(streams[2], sizes, person, people_count)
    practices = _make_practices(streams[2], params, geography, sizes)

    rng = streams[3]
    postcode = np.empty(len(person), dtype=np.int64)
    for p in practices:
        mine = np.flatnonzero(practice == p.index)
        postcode[mine] = p.catchment[rng.integers(len(p.catchment), size=len(mine))]
    streets = np.array(
        [
            f"{stem} {kind}"
            for stem in params.names["street_stems"]
            for kind in params.names["street_kinds"]
        ]
    )
    registrations = Registrations(
        person=person,
        practice=practice,
        start=start,
        end=end,
        end_reason=reason,
        temporary=rng.random(len(person)) < params.temporary_share,
        postcode=postcode,
        house_number=rng.integers(1, 240, size=len(person)),
        street=rng.integers(len(streets), size=len(person)),
    )
    return Nation(config, params, geography, practices, people, registrations, streets)
