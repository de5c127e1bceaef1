"""Benchmark governance: applications taken through the whole process, and the Data Uses
Register generated from them.

    .venv/bin/python bench/governance_bench.py
    .venv/bin/python bench/governance_bench.py --only process:1000

Runs (process:APPLICATIONS): in a fresh child process, on a new SQLite central database in a
temporary folder, the sample organisations and people of `gpdpr.governance.sample`, then
APPLICATIONS applications, each by the service functions the CLI and the portal call, one
transaction per step as they make them: draft, submit (the automatic checks), start of review,
three votes, the decision with minutes, and the agreement. Timed: all of that (the "process"
columns), then `register.write` of the resulting register as JSON, CSV and HTML (the "register"
columns; rows are agreements). Peak MB is the child's peak RSS.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runs import CHILD, chosen_runs, run_child

DEFAULT = [("process", 100), ("process", 300), ("process", 1_000)]


def child(applications: int) -> dict[str, Any]:
    from sqlalchemy.orm import Session

    from gpdpr.db import connect
    from gpdpr.governance import agreements, panel, register, sample
    from gpdpr.governance import applications as apps

    folder = Path(tempfile.mkdtemp(prefix="gpdpr-governance-bench-"))
    engine = connect(f"sqlite:///{folder / 'central.db'}")
    with Session(engine) as session, session.begin():
        sample.seed(session)
    form = sample.DIABETES

    def step(do: Any) -> Any:
        with Session(engine, expire_on_commit=False) as session, session.begin():
            return do(session)

    started = time.perf_counter()
    for _ in range(applications):
        ref = step(lambda s: apps.create_draft(s, "r.okafor", form).reference)
        step(lambda s, r=ref: apps.submit(s, "r.okafor", r))
        step(lambda s, r=ref: panel.start_review(s, sample.ADMIN, r))
        for member in ("panel.lay", "panel.gp", "panel.ethics"):
            step(lambda s, r=ref, m=member: panel.vote(s, m, r, "approve"))
        step(lambda s, r=ref: panel.decide(s, sample.ADMIN, r, "Approved."))
        step(lambda s, r=ref: agreements.issue(s, sample.ADMIN, r))
    processed = time.perf_counter() - started

    started = time.perf_counter()
    with Session(engine) as session:
        written = register.write(session, folder / "register")
    registered = time.perf_counter() - started
    size = sum(p.stat().st_size for p in written.values())
    with Session(engine) as session:
        agreements_made = len(agreements.agreements(session))
    return {
        "applications": applications,
        "process_s": processed,
        "register_s": registered,
        "agreements": agreements_made,
        "register_mb": size / 1e6,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    runs = chosen_runs(__doc__ or "", ["process"], DEFAULT)
    table = Table(
        "applications",
        "process s",
        "applications/s",
        "register s",
        "agreements/s",
        "register MB",
        "peak MB",
        title="governance: the whole process, then the register",
    )
    for _, applications in runs:
        r = run_child(__file__, str(applications))
        table.add_row(
            f"{r['applications']:,}",
            f"{r['process_s']:.1f}",
            f"{r['applications'] / r['process_s']:,.0f}",
            f"{r['register_s']:.2f}",
            f"{r['agreements'] / r['register_s']:,.0f}",
            f"{r['register_mb']:.1f}",
            f"{r['peak_mb']:.0f}",
        )
    Console().print(table)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        print(json.dumps(child(int(sys.argv[2]))))
    else:
        main()
