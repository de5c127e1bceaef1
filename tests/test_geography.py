import re

from gpdpr.synth.geography import build_rows, load_geography, render_csv, shipped_csv


def test_shipped_geography_is_exactly_what_its_definition_builds() -> None:
    assert shipped_csv() == render_csv(build_rows())


def test_postcodes_are_unique_well_formed_and_small_areas_are_in_the_synthetic_range() -> None:
    geo = load_geography()
    assert len(set(geo.postcode.tolist())) == len(geo.postcode)
    assert all(re.fullmatch(r"[A-Z]{1,2}\d{1,2} \d[ABD-HJLNP-UW-Z]{2}", p) for p in geo.postcode)
    assert all(re.fullmatch(r"E019\d{5}", c) for c in geo.lsoa_code)
    assert set(geo.imd_decile.tolist()) == set(range(1, 11))
    assert len(set(geo.region_code.tolist())) == 9
