"""NHS numbers and organisation codes.

An NHS number is nine digits followed by a modulus-11 check digit. Synthetic NHS numbers are drawn
only from the test range 999 000 0000 - 999 999 9999, which is never issued to a real person, so a
synthetic record can never be mistaken for a real one.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

TEST_RANGE_FIRST_BODY = 999_000_000  # first nine digits of 999 000 0000
TEST_RANGE_LAST_BODY = 999_999_999
_WEIGHTS = np.arange(10, 1, -1, dtype=np.int64)  # 10, 9, ..., 2 for digits 1..9


def nhs_check_digit(body: int) -> int | None:
    """The check digit for a nine-digit body, or None when no valid number has that body."""
    digits = [int(c) for c in f"{body:09d}"]
    total = sum(d * w for d, w in zip(digits, range(10, 1, -1), strict=True))
    check = 11 - total % 11
    if check == 11:
        return 0
    return None if check == 10 else check


def is_valid_nhs_number(value: str) -> bool:
    """True when `value` is ten digits whose last digit is the correct modulus-11 check digit."""
    if len(value) != 10 or not value.isdigit():
        return False
    return nhs_check_digit(int(value[:9])) == int(value[9])


def valid_nhs_numbers(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, npt.NDArray[np.bool_]]:
    """For a column of NHS numbers as text (spaces allowed): the numbers without spaces, and
    whether each is valid. Vectorised: a practice's whole list at once."""
    compact = pc.replace_substring(values, " ", "")
    shaped = np.asarray(
        pc.fill_null(pc.match_substring_regex(compact, r"^\d{10}$"), False).to_numpy(
            zero_copy_only=False
        ),
        dtype=bool,
    )
    numbers = pc.if_else(pa.array(shaped), compact, "0").cast(pa.int64())
    number = np.asarray(numbers.to_numpy(zero_copy_only=False), dtype=np.int64)
    valid = shaped & (_check_digits(number // 10) == number % 10)
    if isinstance(compact, pa.ChunkedArray):
        compact = compact.combine_chunks()
    return compact, valid


def is_test_range_nhs_number(value: str) -> bool:
    return is_valid_nhs_number(value) and value.startswith("999")


def _check_digits(bodies: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Vectorised check digits; -1 where the body has no valid number."""
    digits = (bodies[:, None] // (10 ** np.arange(8, -1, -1, dtype=np.int64))) % 10
    check = 11 - (digits @ _WEIGHTS) % 11
    check = np.where(check == 11, 0, check)
    return np.where(check == 10, -1, check)


def _all_test_range_numbers() -> npt.NDArray[np.int64]:
    bodies = np.arange(TEST_RANGE_FIRST_BODY, TEST_RANGE_LAST_BODY + 1, dtype=np.int64)
    checks = _check_digits(bodies)
    valid = checks >= 0
    return bodies[valid] * 10 + checks[valid]


TEST_RANGE_CAPACITY = (
    909_091  # valid numbers in the test range (bodies whose check digit is not 10)
)


def draw_test_nhs_numbers(rng: np.random.Generator, count: int) -> npt.NDArray[np.int64]:
    """`count` distinct valid NHS numbers from the test range, in random order."""
    if count > TEST_RANGE_CAPACITY:
        raise ValueError(
            f"asked for {count:,} distinct NHS numbers but the 999 test range holds only "
            f"{TEST_RANGE_CAPACITY:,} valid ones"
        )
    pool = _all_test_range_numbers()
    return rng.choice(pool, size=count, replace=False)


def format_nhs_number(number: int, spaced: bool = False) -> str:
    text = f"{number:010d}"
    return f"{text[:3]} {text[3:6]} {text[6:]}" if spaced else text
