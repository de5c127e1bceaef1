"""SNOMED CT identifiers (SCTIDs) checked as the SNOMED CT release format defines them.

An SCTID is a string of 6 to 18 decimal digits with no leading zero (a value above 10^5 and below
10^18). Its last digit is a Verhoeff check digit over the rest; the two digits before that are the
partition identifier: the first says short format (0, an International Release component) or long
format (1, the seven digits before it are the namespace of the extension that issued it), the
second the kind of component (0 concept, 1 description, 2 relationship). A dm+d identifier is an
SCTID too (of the UK drug extension, namespace 1000001, or an older short-format one), so the same
rules decide it.

A code in a record names a concept, so only concept identifiers are codes; a description or
relationship identifier in a code's place is a mistake a user should be told of, by its name.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

CONCEPT, DESCRIPTION, RELATIONSHIP = "concept", "description", "relationship"
KINDS = {"0": CONCEPT, "1": DESCRIPTION, "2": RELATIONSHIP}
SHORT, LONG = "short", "long"
NAMESPACE_DIGITS = 7
MIN_LENGTH, MAX_LENGTH = 6, 18


def _dihedral(i: int, j: int) -> int:
    """The product of two elements of the dihedral group D5 (0-4 rotations, 5-9 reflections),
    the multiplication Verhoeff's scheme is built on."""
    if i < 5:
        return (i + j) % 5 if j < 5 else 5 + (i + j) % 5
    return 5 + (i - j) % 5 if j < 5 else (i - j) % 5


_MULTIPLY = [[_dihedral(i, j) for j in range(10)] for i in range(10)]
_STEP = (1, 5, 7, 6, 2, 8, 3, 0, 9, 4)  # Verhoeff's permutation; its powers repeat every 8


def _powers() -> list[list[int]]:
    powers = [list(range(10))]
    for _ in range(7):
        powers.append([_STEP[d] for d in powers[-1]])
    return powers


_PERMUTE = _powers()
_INVERSE = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9]


def check_digit(digits: str) -> str:
    """The Verhoeff check digit to append to `digits` (a string of decimal digits)."""
    c = 0
    for i, d in enumerate(reversed(digits)):
        c = _MULTIPLY[c][_PERMUTE[(i + 1) % 8][ord(d) - 48]]
    return str(_INVERSE[c])


def verhoeff_ok(number: str) -> bool:
    """Whether the last digit of `number` is the Verhoeff check digit of the others."""
    c = 0
    for i, d in enumerate(reversed(number)):
        c = _MULTIPLY[c][_PERMUTE[i % 8][ord(d) - 48]]
    return c == 0


@dataclass(frozen=True)
class Sctid:
    text: str
    kind: str  # concept | description | relationship
    format: str  # short | long
    namespace: str | None  # the issuing extension's namespace, in the long format


def parse(text: str) -> Sctid | str:
    """The identifier's parts, or what is wrong with it (a sentence for a user)."""
    if not (text.isascii() and text.isdigit()):
        return "an SCTID has only the digits 0-9"
    if not MIN_LENGTH <= len(text) <= MAX_LENGTH:
        return f"an SCTID has {MIN_LENGTH} to {MAX_LENGTH} digits, not {len(text)}"
    if text[0] == "0":
        return "an SCTID does not start with 0"
    form, kind = text[-3], text[-2]
    if form not in "01" or kind not in KINDS:
        return f"{form}{kind} is not a partition identifier SNOMED CT uses"
    if form == "1" and len(text) < NAMESPACE_DIGITS + 4:
        return "a long-format SCTID has a seven-digit namespace before its partition identifier"
    if not verhoeff_ok(text):
        return "its check digit is wrong (a digit mistyped or two swapped?)"
    namespace = text[-3 - NAMESPACE_DIGITS : -3] if form == "1" else None
    return Sctid(text, KINDS[kind], LONG if form == "1" else SHORT, namespace)


@lru_cache(maxsize=1 << 16)
def concept_problem(text: str) -> str | None:
    """None when `text` is a concept identifier; otherwise why it is not. (Remembered: a
    practice's records repeat the same few thousand codes batch after batch.)"""
    parsed = parse(text)
    if isinstance(parsed, str):
        return parsed
    if parsed.kind != CONCEPT:
        return f"it is a {parsed.kind} identifier, not a concept's"
    return None


def is_concept_id(text: str) -> bool:
    return concept_problem(text) is None


_CONCEPT_SHAPE = rf"^[1-9][0-9]{{{MIN_LENGTH - 1},{MAX_LENGTH - 1}}}$"
_MULTIPLY_NP = np.array(_MULTIPLY, np.int8)
_PERMUTE_NP = np.array(_PERMUTE, np.int8)


def concept_mask(values: pa.Array) -> npt.NDArray[np.bool_]:
    """`is_concept_id` of every value of a text column at once (False for a null): the same
    rules as `parse`, in array operations, so that judging a million distinct values costs
    a few dozen passes over them rather than a million calls."""
    text = values.cast(pa.large_string())
    shaped = pc.fill_null(pc.match_substring_regex(text, _CONCEPT_SHAPE), False)
    ok: npt.NDArray[np.bool_] = shaped.to_numpy(zero_copy_only=False).copy()
    if not ok.any():
        return ok
    digits = text.filter(shaped)  # only 0-9 now, so a character is a byte
    _, offsets_buffer, data_buffer = digits.buffers()
    offsets = np.frombuffer(offsets_buffer, np.int64)[
        digits.offset : digits.offset + len(digits) + 1
    ]
    data = np.frombuffer(data_buffer, np.uint8)
    end, length = offsets[1:], np.diff(offsets)

    def digit(i: int) -> npt.NDArray[np.int8]:
        """The digit i places left of the check digit (0 where the value is shorter)."""
        at = np.maximum(end - 1 - i, 0)
        out: npt.NDArray[np.int8] = np.where(i < length, data[at] - 48, 0).astype(np.int8)
        return out

    form, kind = digit(2), digit(1)
    sound = (kind == 0) & (form <= 1) & ((form == 0) | (length >= NAMESPACE_DIGITS + 4))
    c = np.zeros(len(digits), np.int8)
    for i in range(MAX_LENGTH):
        stepped = _MULTIPLY_NP[c, _PERMUTE_NP[i % 8][digit(i)]]
        c = np.where(i < length, stepped, c)
    ok[ok] = sound & (c == 0)
    return ok
