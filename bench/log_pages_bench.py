"""Benchmark the portal's transparency log pages on logs of several sizes.

    .venv/bin/python bench/log_pages_bench.py
    .venv/bin/python bench/log_pages_bench.py --only pages:100000

Runs (pages:ENTRIES): in a fresh child process, a service home whose log holds ENTRIES entries
shaped like the service's (log_bench's research-run entry, ~330 bytes), written by the service's
writer 1,000 a batch (not timed). Then, through the portal app (FastAPI's TestClient, in
process): the first view of /log (the log verified: every entry read and hashed, the tree and
the signed checkpoint checked, the entries indexed by type); the same page again (the kept
result: the files unchanged); the last page of the list; one entry's page with its inclusion
proof; the filter by type; and entries.jsonl downloaded whole from /log/files. Peak MB is the
child's peak RSS.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from log_bench import BATCH, entry
from runs import CHILD, chosen_runs, run_child

DEFAULT = [("pages", 10_000), ("pages", 100_000), ("pages", 1_000_000)]


def child(entries: int) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from gpdpr.portal.app import create_app
    from gpdpr.portal.log import PER_PAGE
    from gpdpr.transparency import store
    from gpdpr.transparency.publish import log_folder

    home = Path(tempfile.mkdtemp(prefix="gpdpr-log-pages-bench-"))
    try:
        writer = store.open_verified(log_folder(home), home / "keys")
        for start in range(0, entries, BATCH):
            writer.append([entry(i) for i in range(start, min(entries, start + BATCH))])
        writer.sign()
        del writer
        app = create_app(home)
        browser = TestClient(app)
        timings: dict[str, float] = {}
        last = -(-entries // PER_PAGE)
        for name, path in (
            ("first", "/log"),
            ("again", "/log"),
            ("last_page", f"/log?page={last}"),
            ("entry", f"/log/entries/{entries // 3}"),
            ("filter", "/log?type=tre.run&page=2"),
            ("download", "/log/files/entries.jsonl"),
        ):
            started = time.perf_counter()
            answer = browser.get(path)
            timings[name] = time.perf_counter() - started
            assert answer.status_code == 200, (path, answer.text[-500:])
        assert "The log verifies" in browser.get("/log").text
        app.state.portal.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {
        "entries": entries,
        **timings,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    runs = chosen_runs(__doc__ or "", ["pages"], DEFAULT)
    table = Table(
        "entries",
        "first view s",
        "verified/s",
        "again ms",
        "last page ms",
        "entry ms",
        "filter ms",
        "download s",
        "peak MB",
        title="transparency log pages: the first view verifies, later views use the kept result",
    )
    for _, entries in runs:
        r = run_child(__file__, str(entries))
        table.add_row(
            f"{r['entries']:,}",
            f"{r['first']:.2f}",
            f"{r['entries'] / r['first']:,.0f}",
            f"{r['again'] * 1000:.0f}",
            f"{r['last_page'] * 1000:.0f}",
            f"{r['entry'] * 1000:.0f}",
            f"{r['filter'] * 1000:.0f}",
            f"{r['download']:.2f}",
            f"{r['peak_mb']:.0f}",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        print(json.dumps(child(int(sys.argv[2]))))
    else:
        main()
