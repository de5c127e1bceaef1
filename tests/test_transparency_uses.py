"""Whom a run read, made by the engine and kept in the run's folder (`transparency.uses`): every
person it read is found by their own token, nobody else is, the file holds nothing of anyone's
pseudonym, and the engine's tokens are the custodian's."""

from __future__ import annotations

import hashlib
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpdpr.custodian.central import project_pseudonyms, run_use_token, use_token
from gpdpr.transparency import uses
from gpdpr.tre import views
from gpdpr.tre.engines.base import LakeViews, RunUses, run_uses
from gpdpr.tre.engines.duckdb import DIALECT

KEY = b"a project key of thirty-two byte"
OTHER_KEY = b"another project's key, 32 bytes!"
SALT = "0123456789abcdef" * 2

lake_pseudonyms = st.lists(
    st.binary(min_size=8, max_size=8).map(lambda b: hashlib.sha256(b).hexdigest()),
    max_size=40,
    unique=True,
)
_CON = duckdb.connect()  # one connection for every example: making one is slow


def engine_uses(key: bytes, salt: str, people: list[str]) -> RunUses:
    """What an engine gives for a run that read `people` (lake pseudonyms): the people table
    made as the engines make it, then `views.USES` over it."""
    given = "select patient, patient as person from given"
    plan = LakeViews({}, views.excluded_table([]), given, {}, {}, key, salt, numbered=False)
    _CON.register("given", pa.table({"patient": pa.array(people, pa.string())}))
    _CON.register(views.RUN_KEY, views.run_key_table(plan))
    people_sql = views.people_sql(plan, DIALECT)
    _CON.execute(f"create or replace temp table {views.READ_PEOPLE} as {people_sql}")
    _CON.execute(f"create or replace temp table {views.PEOPLE} as {views.numbered_sql(plan)}")
    tokens = _CON.sql(views.USES).to_arrow_table().column(0)
    return run_uses(salt, tokens)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(read=lake_pseudonyms, others=lake_pseudonyms)
def test_a_run_is_found_for_everyone_it_read_and_no_one_else(
    tmp_path_factory: pytest.TempPathFactory, read: list[str], others: list[str]
) -> None:
    folder = tmp_path_factory.mktemp("run")
    assert uses.keep(folder, engine_uses(KEY, SALT, read)) == len(read)
    assert uses.basis(folder) == SALT
    for person in read:  # the custodian's token of each person read is in the file
        assert uses.holds(folder, run_use_token(KEY, SALT, person))
        # the same person's token for another run (salt) or project is not
        assert not uses.holds(folder, run_use_token(KEY, "f" * 32, person))
        assert not uses.holds(folder, run_use_token(OTHER_KEY, SALT, person))
    for person in [p for p in others if p not in read]:
        assert not uses.holds(folder, run_use_token(KEY, SALT, person))


def test_the_file_holds_nothing_of_anyones_pseudonym(tmp_path: Path) -> None:
    people = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(500)]
    uses.keep(tmp_path, engine_uses(KEY, SALT, people))
    body = (tmp_path / uses.FILE).read_bytes()
    assert len(body) == len(uses.HEADER) + 16 + 16 * 500 + uses.TRAILER
    projected = project_pseudonyms(KEY, pa.array(people)).to_pylist()
    for pseudonym in [*people, *projected]:  # as text, or 8 bytes of it
        assert pseudonym.encode() not in body
        assert bytes.fromhex(pseudonym)[:8] not in body


def test_two_runs_of_one_project_share_no_token(tmp_path: Path) -> None:
    people = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(200)]
    first = engine_uses(KEY, SALT, people).tokens
    second = engine_uses(KEY, "9" * 32, people).tokens
    assert not {tuple(t) for t in first} & {tuple(t) for t in second}


def test_a_run_without_the_file_says_so_and_a_damaged_one_is_refused(tmp_path: Path) -> None:
    assert uses.basis(tmp_path) is None  # a run recorded before files: the database has them
    (tmp_path / uses.FILE).write_bytes(b"not a uses file, at all, not one")
    with pytest.raises(ValueError, match="not a file of run uses"):
        uses.basis(tmp_path)


def test_a_file_of_the_first_version_is_still_read_by_project_pseudonym(tmp_path: Path) -> None:
    """Runs kept before tokens were made of the lake pseudonym keep files of the first version:
    the custodian is told so (`v1:`), and finds their people by their project pseudonyms."""
    people = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(50)]
    projected = project_pseudonyms(KEY, pa.array(people)).to_pylist()
    tokens = pa.array([bytes.fromhex(use_token(KEY, SALT, p))[:16] for p in projected[:30]])
    uses.keep(tmp_path, run_uses(SALT, tokens))
    path = tmp_path / uses.FILE
    path.write_bytes(uses.HEADER_V1 + path.read_bytes()[len(uses.HEADER) : -uses.TRAILER])
    assert uses.basis(tmp_path) == f"v1:{SALT}"
    assert all(uses.holds(tmp_path, use_token(KEY, SALT, p)) for p in projected[:30])
    assert not any(uses.holds(tmp_path, use_token(KEY, SALT, p)) for p in projected[30:])
    assert not any(uses.holds(tmp_path, run_use_token(KEY, SALT, p)) for p in people)


def test_a_run_that_read_nobody_keeps_an_empty_file(tmp_path: Path) -> None:
    assert uses.keep(tmp_path, engine_uses(KEY, SALT, [])) == 0
    assert uses.basis(tmp_path) == SALT
    assert not uses.holds(tmp_path, run_use_token(KEY, SALT, "0" * 64))


@settings(max_examples=50, deadline=None, derandomize=True)
@given(
    tokens=st.lists(st.binary(min_size=16, max_size=16), max_size=60),
    skip=st.integers(0, 5),
)
def test_tokens_are_kept_in_the_order_of_their_bytes_as_a_search_needs(
    tokens: list[bytes], skip: int
) -> None:
    """Every token in ascending order of its 16 bytes (as two big-endian numbers: what `holds`
    searches), from any part of an engine's answer (an array may start part way into its
    buffer), however many zero bytes it has."""
    expected = sorted(tokens[skip:])
    given_tokens = pa.array(tokens, pa.binary()).slice(min(skip, len(tokens)))
    kept = run_uses(SALT, given_tokens).tokens
    assert [row.tobytes() for row in kept.astype(">u8")] == expected
    halves = pa.chunked_array(
        [given_tokens[: len(expected) // 2], given_tokens[len(expected) // 2 :]]
    )
    for other in (halves, given_tokens.cast(pa.binary(16)), given_tokens.cast(pa.large_binary())):
        assert [row.tobytes() for row in run_uses(SALT, other).tokens] == expected


@pytest.mark.parametrize(
    "tokens",
    [
        pa.array([b"short"]),
        pa.array([b"x" * 16, b"y" * 17]),
        pa.array([b"x" * 16, None]),
        pa.chunked_array([pa.array([b"x" * 16]), pa.array([b"y" * 15, b"z" * 17])]),
    ],
)
def test_tokens_of_another_length_are_refused(tokens: pa.Array) -> None:
    with pytest.raises(ValueError, match=r"16 bytes|null"):
        run_uses(SALT, tokens)


@settings(max_examples=12, deadline=None, derandomize=True)
@given(read=lake_pseudonyms, erased=st.sets(st.integers(0, 39)))
def test_an_erased_persons_token_is_gone_and_everyone_else_is_still_found(
    tmp_path_factory: pytest.TempPathFactory, read: list[str], erased: set[int]
) -> None:
    folder = tmp_path_factory.mktemp("run")
    uses.keep(folder, engine_uses(KEY, SALT, read))
    mine = read
    gone = [p for i, p in enumerate(mine) if i in erased]
    tokens = [run_use_token(KEY, SALT, p) for p in gone]
    assert uses.forget(folder, tokens) == len(gone)
    assert uses.forget(folder, tokens) == 0  # a second cycle finds nothing of them
    body = (folder / uses.FILE).read_bytes()
    for person in mine:
        token = run_use_token(KEY, SALT, person)
        assert uses.holds(folder, token) is (person not in gone)
        assert (bytes.fromhex(token[:32]) in body) is (person not in gone)
    assert uses.basis(folder) == SALT
    kept = np.frombuffer(body[len(uses.HEADER) + 16 : -uses.TRAILER], ">u8").reshape(-1, 2)
    assert [tuple(t) for t in kept] == sorted(tuple(t) for t in kept)  # still in order
