"""From what a run computed to the files it may show or release: every measure and every
aggregate table, controlled (`release.disclosure`, `release.tables`), and a `Cell` for every
number considered, published or not, for the differencing check and the checkers."""

from __future__ import annotations

from dataclasses import dataclass

from gpdpr.errors import UserError
from gpdpr.tre.engines.base import Results
from gpdpr.tre.query import nodes as n
from gpdpr.tre.release import disclosure, tables


@dataclass(frozen=True)
class Outputs:
    files: dict[str, bytes]  # file name -> CSV, after disclosure control
    rows: dict[str, int]
    cells: list[disclosure.Cell]


def control(definition: n.Definition, results: Results) -> Outputs:
    """The files a run may show or release: `measure_NAME.csv` for each measure and
    `table_NAME.csv` for each aggregate table, in the definition's order."""
    rule: disclosure.Rule = "midpoint6" if definition.disclosure == "midpoint6" else "round5"
    files: dict[str, bytes] = {}
    rows: dict[str, int] = {}
    cells: list[disclosure.Cell] = []
    for measure in definition.measures:
        file = f"measure_{measure.name}.csv"
        raw = results.measures.get(measure.name)
        if raw is None:
            raise UserError(f"{file}: the run computed no measure {measure.name}")
        table, made = disclosure.control_measure(raw, measure, file, rule)
        files[file], rows[file] = disclosure.render_csv(table), table.num_rows
        cells += made
    for aggregate in definition.tables:
        file = f"table_{aggregate.name}.csv"
        if results.dataset is None:
            raise UserError(f"{file}: the run computed no dataset to make the table from")
        table, made = tables.control_table(results.dataset, definition, aggregate, file, rule)
        files[file], rows[file] = disclosure.render_csv(table), table.num_rows
        cells += made
    return Outputs(files, rows, cells)
