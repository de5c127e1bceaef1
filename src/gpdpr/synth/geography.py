"""The synthetic geography: regions, small areas (LSOA-style), deprivation deciles and postcodes.

geography.csv is generated from data/geography.toml by `python -m gpdpr.synth.geography` and ships
with the package, so the practice extractor can turn a postcode into small-area geography with the
same lookup the generator used. A test rebuilds it and checks the shipped file has not drifted.
"""

from __future__ import annotations

import csv
import io
import tomllib
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

SEED = 20_210_512  # fixed: the geography is part of the package, not of a run
INWARD_LETTERS = "ABDEFGHJLNPQRSTUWXYZ"  # letters used in the inward part of a UK postcode
FIRST_SYNTHETIC_LSOA = 900_000  # E01900000 upwards: no real LSOA uses this range
COLUMNS = ["postcode", "lsoa_code", "region_code", "region_name", "imd_decile", "post_town"]


@dataclass(frozen=True)
class Geography:
    """One row per postcode, as parallel arrays (postcode order is the file's order)."""

    postcode: npt.NDArray[np.str_]
    lsoa_code: npt.NDArray[np.str_]
    region_code: npt.NDArray[np.str_]
    region_name: npt.NDArray[np.str_]
    imd_decile: npt.NDArray[np.int8]
    post_town: npt.NDArray[np.str_]
    region_codes: list[str]  # in the order of geography.toml
    region_shares: npt.NDArray[np.float64]

    def postcodes_in_region(self, region_code: str) -> npt.NDArray[np.intp]:
        return np.flatnonzero(self.region_code == region_code)


def _config() -> dict[str, object]:
    text = resources.files(__package__).joinpath("data/geography.toml").read_text("utf-8")
    return tomllib.loads(text)


def build_rows() -> list[dict[str, str]]:
    """Generate the geography deterministically from data/geography.toml."""
    config = _config()
    regions: list[dict[str, object]] = config["region"]  # type: ignore[assignment]
    total_areas = int(config["small_areas"])  # type: ignore[call-overload]
    per_area = int(config["postcodes_per_area"])  # type: ignore[call-overload]
    rng = np.random.default_rng(SEED)
    shares = np.array([float(r["share"]) for r in regions])  # type: ignore[arg-type]
    areas_per_region = np.floor(shares / shares.sum() * total_areas).astype(int)
    areas_per_region[np.argmax(shares)] += total_areas - areas_per_region.sum()

    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    lsoa_number = FIRST_SYNTHETIC_LSOA
    for region, n_areas in zip(regions, areas_per_region, strict=True):
        skew = float(region["deprivation_skew"])  # type: ignore[arg-type]
        weights = np.exp(-skew * (np.arange(1, 11) - 5.5) / 2.0)
        postcode_areas: list[list[str]] = region["areas"]  # type: ignore[assignment]
        for _ in range(n_areas):
            area, town = postcode_areas[rng.integers(len(postcode_areas))]
            district = int(rng.integers(1, 30))
            sector = int(rng.integers(0, 10))
            decile = int(rng.choice(np.arange(1, 11), p=weights / weights.sum()))
            lsoa = f"E01{lsoa_number:06d}"
            lsoa_number += 1
            made = 0
            while made < per_area:
                unit = "".join(rng.choice(list(INWARD_LETTERS), size=2))
                postcode = f"{area}{district} {sector}{unit}"
                if postcode in seen:
                    continue
                seen.add(postcode)
                made += 1
                rows.append(
                    {
                        "postcode": postcode,
                        "lsoa_code": lsoa,
                        "region_code": str(region["code"]),
                        "region_name": str(region["name"]),
                        "imd_decile": str(decile),
                        "post_town": town,
                    }
                )
    return rows


def render_csv(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def shipped_csv() -> str:
    return resources.files(__package__).joinpath("data/geography.csv").read_text("utf-8")


@cache
def load_geography() -> Geography:
    rows = list(csv.DictReader(io.StringIO(shipped_csv())))
    config = _config()
    regions: list[dict[str, object]] = config["region"]  # type: ignore[assignment]
    shares = np.array([float(r["share"]) for r in regions])  # type: ignore[arg-type]

    def column(name: str) -> npt.NDArray[np.str_]:
        return np.array([r[name] for r in rows])

    return Geography(
        postcode=column("postcode"),
        lsoa_code=column("lsoa_code"),
        region_code=column("region_code"),
        region_name=column("region_name"),
        imd_decile=column("imd_decile").astype(np.int8),
        post_town=column("post_town"),
        region_codes=[str(r["code"]) for r in regions],
        region_shares=shares / shares.sum(),
    )


def main() -> None:
    target = Path(__file__).parent / "data" / "geography.csv"
    target.write_text(render_csv(build_rows()), encoding="utf-8")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
