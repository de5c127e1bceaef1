"""Diabetes care and deprivation: how many adults with type 2 diabetes have an HbA1c check
each month, by the deprivation decile of where they live; and who they are, by sex and age band.

Develop it on dummy data:     gpdpr tre run study.py --dummy
Run it under the agreement:   gpdpr tre submit study.py --agreement DSA-... --as YOUR-HANDLE
"""

from gpdpr.tre.query.language import (
    INTERVAL,
    Dataset,
    Measures,
    case,
    clinical_events,
    codelist_from_csv,
    months,
    patients,
    when,
)

diabetes = codelist_from_csv("codelists/type-2-diabetes.csv")
hba1c = codelist_from_csv("codelists/hba1c.csv")
index_date = "2026-01-01"

# Who: adults with a type 2 diabetes code before the index date.
diagnosed = clinical_events.where(clinical_events.code.is_in(diabetes))
first_diagnosis = diagnosed.sort_by(clinical_events.effective_date).first_for_patient()
age = patients.age_on(index_date)

dataset = Dataset()
dataset.define_population(first_diagnosis.effective_date.is_before(index_date) & (age >= 18))
dataset.sex = patients.sex
dataset.age_band = case(
    when(age < 40).then("18-39"),
    when(age < 60).then("40-59"),
    when(age < 80).then("60-79"),
    otherwise="80+",
)
dataset.imd_decile = patients.imd_decile
dataset.checks_in_2025 = clinical_events.where(
    clinical_events.code.is_in(hba1c)
    & clinical_events.effective_date.is_on_or_between("2025-01-01", "2025-12-31")
).count_for_patient()
dataset.add_table(
    "people_with_diabetes",
    by=["sex", "age_band"],
    statistics={"checks_in_2025": ["mean", "median"]},
)

# How often: the share of them with an HbA1c check in each month, by deprivation decile.
measures = Measures()
measures.define_measure(
    "hba1c_checks",
    numerator=clinical_events.where(
        clinical_events.code.is_in(hba1c) & clinical_events.effective_date.is_during(INTERVAL)
    ).exists_for_patient(),
    denominator=first_diagnosis.effective_date.is_before(INTERVAL.start_date)
    & (patients.age_on(INTERVAL.start_date) >= 18),
    group_by={"imd_decile": patients.imd_decile},
    intervals=months(24).starting_on("2024-10-01"),
)
