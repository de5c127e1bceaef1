"""An engine killed part-way leaves its scratch folder (DuckDB's spill files) in the system's
temporary folder, where it may hold rows of the views it computed on. The erasure cycle removes
the folders of engines whose process is gone, and no other: after it, the scan finds nothing of
the erased person there, while a running engine's folder is left to it."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from rich.console import Console

from gpdpr.collect import erase_beyond
from gpdpr.collect.cli import render_beyond
from gpdpr.collect.erase import Erasure
from gpdpr.collect.service import Cycle
from gpdpr.db import DATABASE_URL_ENV, connect, url_for_home
from gpdpr.tre import scratch
from gpdpr.tre.engines.duckdb import Sandbox
from home_scan import Needle, scan

ERASED = hashlib.sha256(b"someone erased").hexdigest()
RUNNING = hashlib.sha256(b"someone a running engine reads").hexdigest()

KILLED = """
import os, signal, sys
from pathlib import Path
from gpdpr.tre import scratch
from gpdpr.tre.engines.duckdb import Sandbox

box = Sandbox(60, "64MB", threads=1)
Path(box.folder, "duckdb_temp_storage-0.tmp").write_text(sys.argv[1])  # as a spill holds rows
run = Path(scratch.folder("spark-run"))
(run / "part-0.parquet").write_text(sys.argv[1])
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_cycle_removes_a_killed_engines_scratch_folder_and_no_running_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(DATABASE_URL_ENV, raising=False)
    system_tmp = tmp_path / "tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    source = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "TMPDIR": str(system_tmp), "PYTHONPATH": source}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED, ERASED], env=env, capture_output=True, timeout=120
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    running = Sandbox(60, "64MB", threads=1)  # this process's: it is still using it
    Path(running.folder, "duckdb_temp_storage-0.tmp").write_text(RUNNING)
    (system_tmp / "not-gpdpr").mkdir()  # anything else there is not the cycle's to touch
    needles = [Needle(ERASED.encode(), "erased"), Needle(RUNNING.encode(), "running")]
    before = {h.needle for h in scan(system_tmp, needles)}
    assert before == {"erased", "running"}

    home = tmp_path / "home"
    home.mkdir()
    engine = connect(url_for_home(home))
    swept = erase_beyond.sweep(home, home / "keys", engine, [])
    engine.dispose()
    assert swept.scratch == 2  # the DuckDB spill folder and the Spark run's
    told = Console(record=True, width=200)
    render_beyond(Cycle(Erasure(None), 0, beyond=swept), told)
    assert "2 scratch folders of research engines that were stopped part-way removed" in (
        told.export_text()
    )
    assert [h.needle for h in scan(system_tmp, needles)] == ["running"]
    assert (system_tmp / "not-gpdpr").is_dir()
    scratch.sweep()  # a second cycle, the engine still alive: its folder stays
    assert Path(running.folder).is_dir()
    running.close()
