import numpy as np
import pytest

from gpdpr.identifiers import (
    TEST_RANGE_CAPACITY,
    _all_test_range_numbers,
    draw_test_nhs_numbers,
    is_test_range_nhs_number,
    is_valid_nhs_number,
    nhs_check_digit,
)


@pytest.mark.parametrize("number", ["9434765919", "4010232137", "9990000018"])
def test_valid_nhs_numbers_pass(number: str) -> None:
    assert is_valid_nhs_number(number)


@pytest.mark.parametrize(
    "number", ["9434765918", "943476591", "94347659190", "94347659a9", "", "9990000010"]
)
def test_wrong_check_digit_length_or_characters_fail(number: str) -> None:
    assert not is_valid_nhs_number(number)


def test_a_body_whose_check_digit_would_be_ten_has_no_valid_number() -> None:
    # 999000000: 9*10 + 9*9 + 9*8 = 243 = 22*11 + 1, and 11 - 1 = 10: no valid number exists.
    assert nhs_check_digit(999000000) is None
    assert not any(is_valid_nhs_number(f"999000000{d}") for d in range(10))


def test_test_range_capacity_is_what_the_range_really_holds() -> None:
    numbers = _all_test_range_numbers()
    assert len(numbers) == TEST_RANGE_CAPACITY
    sample = numbers[:: len(numbers) // 997]
    assert all(is_test_range_nhs_number(f"{n:010d}") for n in sample)


def test_drawn_numbers_are_distinct_valid_and_in_the_test_range() -> None:
    drawn = draw_test_nhs_numbers(np.random.default_rng(1), 5000)
    assert len(set(drawn.tolist())) == 5000
    assert all(is_test_range_nhs_number(f"{n:010d}") for n in drawn)


def test_asking_for_more_numbers_than_the_range_holds_is_refused() -> None:
    with pytest.raises(ValueError, match="909,091"):
        draw_test_nhs_numbers(np.random.default_rng(1), TEST_RANGE_CAPACITY + 1)
