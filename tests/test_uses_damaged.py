"""A run's file of whom it read (`uses.bin`), damaged on disk: cut short, its header spoiled, of a
version this gpdpr does not read, or one byte flipped anywhere. Each is refused with a clear
error (which file, what is wrong, what to do), as a UserError the command line prints on one
line; never a traceback, never a wrong answer; and the file is left as it was, for a restore.
The erasure cycle, stopped while rewriting it, is finished by the next."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from gpdpr.custodian.central import run_use_token
from gpdpr.errors import UserError
from gpdpr.transparency import uses
from gpdpr.tre.engines.base import run_uses

KEY = b"a project key of thirty-two byte"
SALT = "0123456789abcdef" * 2
PEOPLE = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(40)]
TOKENS = [run_use_token(KEY, SALT, p) for p in PEOPLE]


def kept(folder: Path, read: int = 30) -> Path:
    uses.keep(folder, run_uses(SALT, pa.array([bytes.fromhex(t[:32]) for t in TOKENS[:read]])))
    return folder / uses.FILE


def flip(at: int) -> Callable[[bytes], bytes]:
    return lambda body: body[:at] + bytes([body[at] ^ 0x01]) + body[at + 1 :]


HEADER, SALT_AT, TOKENS_AT = 0, len(uses.HEADER), len(uses.HEADER) + 16
DAMAGE: dict[str, tuple[Callable[[bytes], bytes], str]] = {
    "cut mid-token": (lambda b: b[:-5], "cut short or has bytes added"),
    "cut to the header": (lambda b: b[:10], "cut short"),
    "its trailer cut off": (lambda b: b[: -uses.TRAILER], "does not end with its trailer"),
    "a byte added": (lambda b: b + b"\0", "cut short or has bytes added"),
    "empty": (lambda b: b"", "cut short"),
    "another kind of file": (lambda b: b"PAR1" + b[4:], "not a file of run uses"),
    "a newer version": (lambda b: b"gpdpr uses v9" + b[13:], "version this gpdpr does not read"),
    "a flipped byte in the header": (flip(3), "not a file of run uses"),
    "its version flipped to 2": (flip(12), "its header was altered"),
    "a flipped byte in the salt": (flip(SALT_AT + 7), "altered or damaged"),
    "a flipped byte in a token's first half": (flip(TOKENS_AT + 16 * 4 + 2), "altered or damaged"),
    "a flipped byte in a token's last half": (flip(TOKENS_AT + 16 * 29 + 15), "altered or damaged"),
    "a flipped byte in the sum": (lambda b: flip(len(b) - 1)(b), "altered or damaged"),
    "two tokens swapped": (
        lambda b: (
            b[:TOKENS_AT]
            + b[TOKENS_AT + 16 : TOKENS_AT + 32]
            + b[TOKENS_AT : TOKENS_AT + 16]
            + b[TOKENS_AT + 32 :]
        ),
        "altered or damaged",
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_file_is_a_clear_error_and_is_left_as_it_was(tmp_path: Path, damage: str) -> None:
    path = kept(tmp_path)
    spoil, why = DAMAGE[damage]
    damaged = spoil(path.read_bytes())
    path.write_bytes(damaged)
    with pytest.raises(UserError) as refused:
        uses.basis(tmp_path)
        uses.holds(tmp_path, TOKENS[0])  # the shape may hold: the sum is checked before answering
    message = str(refused.value)
    assert str(path) in message and why in message, message
    assert "Restore it from a backup" in message or "Run that version" in message, message
    assert "\n" not in message  # one line, as the command line prints it
    assert path.read_bytes() == damaged  # nothing changed, for the restore


def test_every_single_flipped_bit_is_caught(tmp_path: Path) -> None:
    """Not only the bytes chosen above: any bit of the header, salt, tokens or trailer."""
    path = kept(tmp_path, read=2)
    whole = path.read_bytes()
    for at in range(len(whole)):
        for bit in range(8):
            path.write_bytes(whole[:at] + bytes([whole[at] ^ (1 << bit)]) + whole[at + 1 :])
            with pytest.raises(uses.UsesDamaged):
                uses.basis(tmp_path)
                uses.holds(tmp_path, TOKENS[0])
    path.write_bytes(whole)
    assert uses.holds(tmp_path, TOKENS[0])


def test_an_erasure_stopped_part_way_is_reported_then_finished_by_the_next(tmp_path: Path) -> None:
    path = kept(tmp_path)
    assert uses.forget(tmp_path, TOKENS[:3]) == 3
    assert not uses.holds(tmp_path, TOKENS[0]) and uses.holds(tmp_path, TOKENS[3])
    # a cycle killed between marking the file and writing its slots
    body = bytearray(path.read_bytes())
    body[-uses.TRAILER] = ord("~")
    path.write_bytes(bytes(body))
    with pytest.raises(uses.UsesDamaged, match="Run `gpdpr erase` again"):
        uses.holds(tmp_path, TOKENS[3])
    assert uses.forget(tmp_path, TOKENS[:3]) == 0  # the next cycle: nothing left of them
    assert uses.holds(tmp_path, TOKENS[3]) and not uses.holds(tmp_path, TOKENS[1])
    assert uses.forget(tmp_path, TOKENS[:30]) == 30  # 27 people, and the 3 copies of them
    assert uses.basis(tmp_path) == SALT and not uses.holds(tmp_path, TOKENS[5])
    assert len(path.read_bytes()) == TOKENS_AT + uses.TRAILER


def test_a_file_of_the_third_version_is_read_as_tokens_of_the_second_form(tmp_path: Path) -> None:
    """Files of uses before 2026-12-07 hold tokens of the second form (an HMAC of the lake
    pseudonym): the custodian is told so (`v2:`), with the same trailer checked."""
    path = kept(tmp_path)
    path.write_bytes(uses.HEADER_V3 + path.read_bytes()[len(uses.HEADER) :])
    assert uses.basis(tmp_path) == f"v2:{SALT}"
    assert all(uses.holds(tmp_path, t) for t in TOKENS[:30])
    assert uses.forget(tmp_path, TOKENS[:2]) == 2 and not uses.holds(tmp_path, TOKENS[0])
    assert path.read_bytes()[: len(uses.HEADER)] == uses.HEADER_V3  # and kept as it was
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(uses.UsesDamaged, match="cut short"):
        uses.basis(tmp_path)


def test_a_file_of_the_second_version_is_still_read(tmp_path: Path) -> None:
    path = kept(tmp_path)
    path.write_bytes(uses.HEADER_V2 + path.read_bytes()[len(uses.HEADER) : -uses.TRAILER])
    assert uses.basis(tmp_path) == f"v2:{SALT}"
    assert all(uses.holds(tmp_path, t) for t in TOKENS[:30])
    assert not any(uses.holds(tmp_path, t) for t in TOKENS[30:])
    assert uses.forget(tmp_path, TOKENS[:2]) == 2 and not uses.holds(tmp_path, TOKENS[0])
    kept_tokens = np.frombuffer(path.read_bytes()[TOKENS_AT:], ">u8").reshape(-1, 2)
    assert len(kept_tokens) == 30
