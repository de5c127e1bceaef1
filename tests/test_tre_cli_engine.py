"""Choosing the engine from the command line: Spark on a cluster is named by --spark-master
(or GPDPR_SPARK_MASTER); the option means nothing to DuckDB, and saying so beats ignoring it."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpdpr import cli
from gpdpr.tre.cli import engine_named
from gpdpr.tre.engines.spark import SparkEngine

runner = CliRunner()


def test_the_spark_master_named_is_the_one_a_run_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = engine_named("spark", "spark://centre-cluster:7077")
    assert isinstance(engine, SparkEngine) and engine.master == "spark://centre-cluster:7077"
    local = engine_named("spark")
    assert isinstance(local, SparkEngine) and local.master is None  # this machine, local[2]


def test_a_spark_master_for_duckdb_is_refused_not_ignored(tmp_path: Path) -> None:
    study = tmp_path / "study.py"
    study.write_text("from gpdpr.tre.language import *\ndataset = Dataset()\n")
    for given in (["--spark-master", "local[1]"], []):
        env = {} if given else {"GPDPR_SPARK_MASTER": "local[1]"}
        result = runner.invoke(cli.app, ["tre", "run", str(study), "--dummy", *given], env=env)
        assert result.exit_code != 0
        assert "--spark-master is for --engine spark" in result.output
