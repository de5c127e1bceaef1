"""Benchmark the transparency log: appending, proving, and verifying it whole.

    .venv/bin/python bench/log_bench.py
    .venv/bin/python bench/log_bench.py --only log:100000

Runs (log:ENTRIES): in a fresh child process, in a temporary folder, ENTRIES entries shaped like the
service's (a research run's entry, ~330 bytes of canonical JSON) appended by the service's writer in
batches of 1,000, each batch fsync'd and a checkpoint signed after it and co-signed by one witness,
as a publish does ("append" columns). Then: the start-up check (`store.open_verified`: read, re-hash
the whole tree, check the signed checkpoint); 1,000 inclusion proofs and 1,000 consistency proofs
made and checked against the signed root, at random entries and sizes ("proof" column, per proof);
and a verifier's full check from the public files alone (`verify.verify` with a kept checkpoint from
half-way: read, recompute the tree, check the signature, prove consistency). Peak MB is the
child's peak RSS.
"""

from __future__ import annotations

import json
import random
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from runs import CHILD, chosen_runs, run_child

DEFAULT = [("log", 10_000), ("log", 100_000), ("log", 1_000_000)]
BATCH = 1_000


def entry(i: int) -> dict[str, Any]:
    return {
        "type": "tre.run",
        "time": "2026-12-05T13:24:50Z",
        "actor": {"role": "researcher", "organisation": "University of Leeds"},
        "details": {
            "run": f"RUN-{i:06d}",
            "project": "APP-2026-0001",
            "agreement": "DSA-2026-0001",
            "definition_sha256": f"{i:064x}",
            "lake_version": i // 100,
            "engine": "duckdb",
            "status": "succeeded",
        },
    }


def child(entries: int) -> dict[str, Any]:
    from gpdpr.transparency import checkpoint as cp
    from gpdpr.transparency import cosigning, merkle, store, witness
    from gpdpr.transparency.verify import Source, verify

    folder = Path(tempfile.mkdtemp(prefix="gpdpr-log-bench-"))
    try:
        writer = store.open_verified(folder / "log", folder / "keys")
        log_key = cp.log_verifier(writer.key).vkey
        witness.create(folder / "w", "bench.example/w", [log_key])
        pinned = cosigning.enrol(folder / "keys", folder / "w", 1)
        kept = b""
        started = time.perf_counter()
        for start in range(0, entries, BATCH):
            writer.append([entry(i) for i in range(start, min(entries, start + BATCH))])
            signed = writer.sign()  # and co-signed by a witness, as a publish does
            gathered = cosigning.gather(writer, folder / "keys", signed, int(time.time()))
            writer.publish(gathered.checkpoint)
            if not kept and writer.size >= entries // 2:
                kept = (folder / "log" / store.CHECKPOINT).read_bytes()
        appended = time.perf_counter() - started
        size_mb = (folder / "log" / store.ENTRIES).stat().st_size / 1e6

        started = time.perf_counter()
        opened = store.open_verified(folder / "log", folder / "keys")
        startup = time.perf_counter() - started

        tree, root = opened.contents.tree, opened.contents.tree.root()
        rng = random.Random(1)
        started = time.perf_counter()
        for _ in range(1_000):
            index = rng.randrange(entries)
            proof = tree.inclusion_proof(index)
            merkle.verify_inclusion(tree.leaf(index), index, entries, proof, root)
            old = rng.randrange(1, entries + 1)
            proof = tree.consistency_proof(old)
            merkle.verify_consistency(old, entries, tree.root(old), root, proof)
        per_proof = (time.perf_counter() - started) / 2_000

        started = time.perf_counter()
        verify(Source(folder=folder / "log"), pinned, kept, "kept")
        verified = time.perf_counter() - started
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "entries": entries,
        "append_s": appended,
        "startup_s": startup,
        "proof_ms": per_proof * 1000,
        "verify_s": verified,
        "size_mb": size_mb,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    runs = chosen_runs(__doc__ or "", ["log"], DEFAULT)
    table = Table(
        "entries",
        "append s",
        "appended/s",
        "start-up s",
        "proof ms",
        "verify s",
        "verified/s",
        "log MB",
        "peak MB",
        title="transparency log: append (1,000 a batch, fsync, signed), proofs, verification",
    )
    for _, entries in runs:
        r = run_child(__file__, str(entries))
        table.add_row(
            f"{r['entries']:,}",
            f"{r['append_s']:.1f}",
            f"{r['entries'] / r['append_s']:,.0f}",
            f"{r['startup_s']:.2f}",
            f"{r['proof_ms']:.3f}",
            f"{r['verify_s']:.2f}",
            f"{r['entries'] / r['verify_s']:,.0f}",
            f"{r['size_mb']:.0f}",
            f"{r['peak_mb']:.0f}",
        )
    Console(width=120).print(table)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        print(json.dumps(child(int(sys.argv[2]))))
    else:
        main()
