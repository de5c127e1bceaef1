"""Red team, resource exhaustion (issue 17): a small definition that costs without bound to check
(a DAG that reuses each node twice, doubling per level: 1.5 KB took 34 s, four times more per
level), a chain deep enough to end in an uncaught RecursionError, and runs that crash leaving a
half-made `.pending` folder behind.

What must hold: each hostile definition is refused with a clear error (exit 2, saying what limit
it passed) by `gpdpr tre submit` in a child process that is stopped after 120 s (no test here
measures time: a check whose cost is linear in the definition's size finishes at once, one that
is exponential never would); and a run that fails, however, leaves no half-made folder."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa

from governing import LEAD
from gpdpr.errors import UserError
from gpdpr.tre import runs
from gpdpr.tre.engines.base import Results, Views
from gpdpr.tre.query import nodes as n
from redteam import (
    ENGINES,
    World,
    assert_harmless,
    base_dataset,
    edited,
    engine_named,
    submit,
    subprocess_gpdpr,
    the_world,
)

LIMIT_WORDS = re.compile(r"node|deep|depth|nest|size|large|limit|at most|too many", re.IGNORECASE)
DOUBLINGS = 40  # 2**40 paths through 45 nodes
CHAIN = 5_000  # nodes, one on the next


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    yield the_world(tmp_path_factory)


def hostile(nodes: list[dict[str, Any]]) -> bytes:
    """A dataset of women by sex with one more variable, `cost`: the last of `nodes` (which
    follow the patients table, node 0, and its sex, node 1)."""
    base = [
        {"node": "SelectTable", "name": "patients", "at": None},
        {"node": "Column", "frame": 0, "name": "sex", "at": None},
        {"node": "Column", "frame": 0, "name": "imd_decile", "at": None},
        {"node": "Value", "value": "F", "kind": "str", "at": None},
        {"node": "Apply", "op": "eq", "args": [1, 3], "at": None},
    ]
    document = {
        "format": "gpdpr-definition/1",
        "nodes": base + nodes,
        "population": 4,
        "variables": [["sex", 1], ["cost", len(base) + len(nodes) - 1]],
        "measures": [],
        "tables": [{"name": "by_sex", "by": ["sex"], "statistics": [], "at": None}],
        "disclosure": "round5",
    }
    return orjson.dumps(document)


def doubling(levels: int) -> bytes:
    """imd_decile + itself, that + itself, ... `levels` times: each node used twice by the
    next, so the graph has `levels` + 5 nodes and 2**levels paths from top to bottom."""
    nodes = []
    below = 2
    for level in range(levels):
        nodes.append({"node": "Apply", "op": "add", "args": [below, below], "at": None})
        below = 5 + level
    return hostile(nodes)


def chain(length: int) -> bytes:
    """not(not(not(... sex == "F" ...))), `length` deep."""
    nodes = []
    below = 4
    for level in range(length):
        nodes.append({"node": "Apply", "op": "not", "args": [below], "at": None})
        below = 5 + level
    return hostile(nodes)


@pytest.mark.parametrize(
    ("shape", "document", "nodes"),
    [
        ("doubling", doubling(DOUBLINGS), DOUBLINGS + 5),
        ("chain", chain(CHAIN), CHAIN + 5),
    ],
)
@pytest.mark.parametrize("engine", ENGINES)
def test_a_costly_definition_is_refused_with_a_clear_error(
    world: World, engine: str, shape: str, document: bytes, nodes: int, tmp_path: Path
) -> None:
    """`gpdpr tre submit` of a small definition built to cost: a DAG doubling per level (45
    nodes, 2.5 KB) or a 5,000-deep chain. Refused with exit 2 and a message saying what limit it
    passed; never a timeout, a RecursionError or any other traceback."""
    engine_named(engine)
    assert len(orjson.loads(document)["nodes"]) == nodes
    path = tmp_path / f"{shape}.json"
    path.write_bytes(document)
    before = world.state()
    outcome = subprocess_gpdpr(
        [
            "tre",
            "submit",
            str(path),
            "--agreement",
            world.agreement,
            "--as",
            LEAD,
            "--engine",
            engine,
            "--home",
            str(world.home),
        ]
    )
    assert outcome.refused, f"exit {outcome.code}, not a clear refusal:\n{outcome.text[-3000:]}"
    assert "Traceback" not in outcome.text
    assert LIMIT_WORDS.search(outcome.text), outcome.text
    assert_harmless(world, outcome, before)


# ---- a failed run leaves nothing behind -------------------------------------------------------


def test_a_run_that_cannot_write_its_outputs_leaves_no_half_made_folder(world: World) -> None:
    """A table whose name makes its file's path lead nowhere ("by/sex"): the run fails (or is
    refused) and no `.pending` folder is left."""
    document = edited(base_dataset(), lambda d: d["tables"][0].update(name="by/sex"))
    before = world.state()
    outcome = submit(world, document, "duckdb")
    assert world.pending(before) == [], outcome.text
    assert world.new_files(before) == []


def test_a_run_whose_folder_cannot_be_made_leaves_no_half_made_folder(world: World) -> None:
    """The folder the next run would move its outputs into is already taken (the disk, another
    process, a restore): the run fails, leaving no `.pending` folder and no succeeded run whose
    outputs are not in its folder."""
    from gpdpr.tre.models import Run

    with world.db.connect() as connection:
        last = connection.execute(sa.select(sa.func.max(Run.id))).scalar() or 0
    taken = runs.run_folder(world.home, f"RUN-{last + 1:06d}")
    taken.mkdir(parents=True)
    (taken / "someone-elses.txt").write_text("not the run's\n")
    before = world.state()
    outcome = submit(world, base_dataset(), "duckdb")
    assert world.pending(before) == []
    with world.db.connect() as connection:
        succeeded = connection.execute(
            sa.select(Run.reference, Run.outputs).where(Run.status == "succeeded")
        ).all()
    missing = [
        (reference, name)
        for reference, outputs in succeeded
        for name in outputs
        if not (runs.run_folder(world.home, reference) / runs.OUTPUTS / name).is_file()
    ]
    assert missing == [], outcome.text


class Broken:
    """An engine that fails part way, as one that runs out of memory or time would."""

    name = "duckdb"

    def run(self, definition: n.Definition, views: Views) -> Results:
        raise MemoryError("the engine ran out of memory")


def test_a_run_whose_engine_fails_leaves_nothing_behind(world: World) -> None:
    """The engine fails part way: no `.pending` folder, no new file outside a run's folder."""
    before = world.state()
    with contextlib.suppress(UserError):  # the run failed, and says only that
        runs.submit(world.home, LEAD, world.agreement, base_dataset(), Broken())
    assert world.pending(before) == []
    assert world.new_files(before) == []
