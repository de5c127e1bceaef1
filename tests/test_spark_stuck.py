"""A Spark run that is stuck past its time limit ends (`engines.spark._Deadline`), and the
next run works.

Cancelling a run's job group stops Spark's jobs, but a run can be stuck outside any job: a
collection to Arrow whose serving thread is gone (seen at 1 million people, the driver short
of memory), or a JVM that does not answer at all. Here the JVM is frozen (SIGSTOP) while a run
waits on it, the hardest case: nothing in Spark can answer, and only ending its process can
free the run."""

from __future__ import annotations

import os
import signal
import time

import pytest

import tre_data
from gpdpr.tre.engines import spark
from gpdpr.tre.engines.base import RunFailed
from gpdpr.tre.query.language import patients
from test_tre_engines import NUMBERS, dataset


def test_a_run_stuck_on_a_spark_that_does_not_answer_ends_and_the_next_run_works() -> None:
    engine = tre_data.engine("spark")  # started with the tests' settings
    definition = dataset()
    definition.sex = patients.sex
    definition.imd = patients.imd_decile
    before = tre_data.run(engine, NUMBERS, definition)
    jvm = spark.session().sparkContext._gateway.proc  # type: ignore[union-attr]
    stuck = spark.SparkEngine(settings=tre_data.SPARK_SETTINGS, seconds=2, grace=1)
    os.kill(jvm.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(RunFailed, match="longer than its time limit"):
            tre_data.run(stuck, NUMBERS, definition)
        assert time.monotonic() - started < 120  # 3 s, but for a machine busy elsewhere
        assert jvm.wait(timeout=60) is not None  # the frozen JVM was ended, not left behind
    finally:
        if jvm.poll() is None:
            os.kill(jvm.pid, signal.SIGCONT)
    after = tre_data.run(engine, NUMBERS, definition)  # a new session, started as before
    assert after.dataset == before.dataset
    assert after.dataset is not None and after.dataset.num_rows == 4


def test_a_run_after_sparks_jvm_exited_starts_a_new_session() -> None:
    """A driver that runs out of memory exits (`-XX:+ExitOnOutOfMemoryError`) rather than
    leave runs waiting on its dead threads: the next run starts Spark again, as it was
    started, and works."""
    engine = tre_data.engine("spark")
    definition = dataset()
    definition.sex = patients.sex
    before = tre_data.run(engine, NUMBERS, definition)
    jvm = spark.session().sparkContext._gateway.proc  # type: ignore[union-attr]
    jvm.kill()  # as the JVM exits on running out of memory
    jvm.wait(timeout=60)
    after = tre_data.run(engine, NUMBERS, definition)
    assert after.dataset == before.dataset
    assert spark.session().sparkContext._gateway.proc.pid != jvm.pid  # type: ignore[union-attr]
