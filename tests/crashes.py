"""A crash harness: run a gpdpr command in a child process, kill it (SIGKILL) at a chosen point,
run it again, and compare what a person cares about with a run that was never cut.

Kill points are counted, not timed, so a loaded machine changes nothing:
  - every named step (gpdpr.durable.step) the command takes, counted from a traced clean run;
  - a seeded sample of its file system steps (files opened for writing, renamed, linked,
    deleted, folders made: Python's audit events, counted by a hook in the child), so cuts also
    land where no step was named.
The same counts simulate a full disk: the step fails with ENOSPC instead of killing.

Children are forked from a server process that has imported gpdpr once: a kill point costs the
command's own work, not the interpreter's start-up (seconds on a loaded machine).
"""

from __future__ import annotations

import atexit
import errno
import importlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout, suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import sqlalchemy as sa

from gpdpr import durable
from gpdpr.db import DATABASE_URL_ENV

T = TypeVar("T")

PRELOAD = [
    "gpdpr.cli",
    "gpdpr.collect.service",
    "gpdpr.transparency.publish",
    "gpdpr.custodian.keys",
    "gpdpr.lake.query",
]
FS_ROOT = "GPDPR_TEST_FS_ROOT"  # only file system steps under this folder count
FS_TRACE = "GPDPR_TEST_FS_TRACE"  # a file the child writes its count of steps to
FS_KILL_AT = "GPDPR_TEST_FS_KILL_AT"
FS_FULL_AT = "GPDPR_TEST_FS_FULL_AT"
KILLED = -signal.SIGKILL
TIMEOUT = 600  # seconds: generous, for a loaded machine; a run takes about one

# Audit events that change the file system (builtin and os.open report as "open").
_CHANGES = {
    "os.rename",
    "os.remove",
    "os.link",
    "os.mkdir",
    "os.rmdir",
    "os.truncate",
    "os.chmod",
    "shutil.rmtree",
}
_WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


@dataclass
class Run:
    code: int | None  # the exit code; -9 when killed
    output: str  # stdout and stderr together


def _child(argv: list[str], env: dict[str, str], output: str) -> None:
    """In the forked child: the command, as `gpdpr ARGV` would run it."""
    os.environ.update(env)
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    counter = _FsSteps.start()
    try:
        from gpdpr.cli import app

        app(argv, prog_name="gpdpr")
    finally:
        if counter is not None:
            counter.done()


class _FsSteps:
    """Counts the child's file system steps under FS_ROOT; kills or fails at the one asked."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.seen = 0
        self.kill_at = int(os.environ.get(FS_KILL_AT, "0"))
        self.full_at = int(os.environ.get(FS_FULL_AT, "0"))
        self.trace = os.environ.get(FS_TRACE)
        self.quiet = False

    @classmethod
    def start(cls) -> _FsSteps | None:
        root = os.environ.get(FS_ROOT)
        if not root:
            return None
        counter = cls(root)
        sys.addaudithook(counter.hook)
        return counter

    def hook(self, event: str, args: tuple[Any, ...]) -> None:
        if self.quiet:
            return
        if event == "open":
            path, _, flags = args
            if not (isinstance(flags, int) and flags & _WRITING):
                return
        elif event not in _CHANGES:
            return
        else:
            path = args[0]
        if not isinstance(path, str | os.PathLike) or not os.fspath(path).startswith(self.root):
            return
        if event == "os.mkdir" and os.path.isdir(path):
            return  # changes nothing (and `exist_ok` would swallow a failure made up here)
        self.seen += 1
        if self.seen == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.seen == self.full_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))

    def done(self) -> None:
        self.quiet = True
        if self.trace:
            with open(self.trace, "w") as f:
                f.write(str(self.seen))


class _Server:
    """A process that has imported gpdpr once and forks a child per command, reporting each
    child's process id, then its exit status (-9 when killed)."""

    def __init__(self) -> None:
        import gpdpr

        path = [str(Path(__file__).parent), str(Path(gpdpr.__file__).parents[1])]
        if os.environ.get("PYTHONPATH"):
            path.append(os.environ["PYTHONPATH"])
        self.process = subprocess.Popen(
            [sys.executable, "-c", "import crashes; crashes.serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(path)},
        )
        atexit.register(self.close)

    def run(self, request: dict[str, Any]) -> int:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        pid = int(self._reply(TIMEOUT))
        try:
            return int(self._reply(TIMEOUT))
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self._reply(TIMEOUT)
            raise AssertionError(
                f"gpdpr {' '.join(request['argv'])} ran over {TIMEOUT} s"
            ) from None

    def _reply(self, timeout: float) -> bytes:
        assert self.process.stdout is not None
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError
        line = self.process.stdout.readline()
        if not line:
            raise AssertionError("the crash harness's server died")
        return line

    def close(self) -> None:
        if self.process.poll() is None and self.process.stdin is not None:
            self.process.stdin.close()
            self.process.wait(TIMEOUT)


def serve() -> None:
    """The server's loop (see _Server): one request a line on stdin."""
    for module in PRELOAD:
        importlib.import_module(module)
    _warm_up()
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _child(request["argv"], request["env"], request["output"])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(pid, flush=True)
        _, status = os.waitpid(pid, 0)
        print(os.waitstatus_to_exitcode(status), flush=True)


def _warm_up() -> None:
    """Run a command that is refused before it touches anything, so that what the command line
    library imports and builds on its first call is done here, once."""
    from gpdpr.cli import app

    with (
        open(os.devnull, "w") as sink,
        redirect_stdout(sink),
        redirect_stderr(sink),
        suppress(SystemExit),
    ):
        app(["custodian", "issue-practice", "1", "--keys", os.devnull], prog_name="gpdpr")


_server: _Server | None = None


def run(argv: list[str], env: dict[str, str] | None = None, where: Path | None = None) -> Run:
    """Run `gpdpr ARGV` in a child process; its exit code and output."""
    global _server
    if _server is None:
        _server = _Server()
    folder = where or Path(os.environ.get("TMPDIR", "/tmp"))
    output = folder / f".run-{os.getpid()}-{random.getrandbits(32):08x}.out"
    code = _server.run(
        {
            "argv": argv,
            # No database named: the home's own SQLite (never one the server inherited).
            "env": {"PYTHONDONTWRITEBYTECODE": "1", DATABASE_URL_ENV: "", **(env or {})},
            "output": str(output),
        }
    )
    text = output.read_text(errors="replace") if output.exists() else ""
    output.unlink(missing_ok=True)
    return Run(code, text)


DATABASE_URL_FILE = "database-url"  # beside a run's home: the PostgreSQL database it uses


def database_url(at: Path) -> str | None:
    """The PostgreSQL database of the run in folder `at`; None: the home's own SQLite."""
    named = at / DATABASE_URL_FILE
    return named.read_text().strip() if named.exists() else None


@dataclass
class Postgres:
    """Each run's own copy of a template database on a PostgreSQL server (CREATE DATABASE ...
    TEMPLATE: a file copy, a fraction of a second), named in DATABASE_URL_FILE beside its home."""

    server: str  # a URL of the server
    template: str  # the database the operation's template state is in

    def url(self, database: str) -> str:
        return sa.make_url(self.server).set(database=database).render_as_string(False)

    def _admin(self) -> sa.Engine:
        return sa.create_engine(self.server, isolation_level="AUTOCOMMIT")

    def create(self, database: str, template: str | None = None) -> str:
        admin = self._admin()
        try:
            with admin.connect() as connection:
                if template is not None:
                    # A template must have no connections: end those the set-up left pooled.
                    connection.exec_driver_sql(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND pid <> pg_backend_pid()",
                        (template,),
                    )
                copy = f' TEMPLATE "{template}"' if template else ""
                connection.exec_driver_sql(f'CREATE DATABASE "{database}"{copy}')
        finally:
            admin.dispose()
        return self.url(database)

    def copy_for(self, at: Path) -> None:
        database = f"crash_{random.getrandbits(48):012x}"
        (at / DATABASE_URL_FILE).write_text(self.create(database, self.template))

    def drop(self, at: Path) -> None:
        url = database_url(at)
        if url is not None:
            self.drop_database(str(sa.make_url(url).database))

    def drop_database(self, database: str) -> None:
        admin = self._admin()
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        finally:
            admin.dispose()


@dataclass
class Operation:
    """A command to cut, from a starting state kept in `template`."""

    name: str
    template: Path
    command: Callable[[Path], list[str]]  # its argv, given the folder it works in
    observe: Callable[[Path], dict[str, Any]]  # what must come out the same
    again: Callable[[Path], list[str]] | None = None  # the re-run's argv (default: the same)
    between: Callable[[Path], None] | None = None  # checks on the state a kill left
    ok: tuple[int, ...] = (0,)  # exit codes of a finished run
    again_ok: tuple[int, ...] = (0,)  # exit codes of a re-run (one may rightly refuse)
    # Named steps from this one on are another operation's, cut there (the log's publish,
    # which every central command ends with, is cut as `log publish`).
    until: str | None = None
    database: Postgres | None = None  # None: each run's home has its own SQLite


@dataclass
class Report:
    name: str
    steps: list[str]
    fs_steps: int
    kills: list[str] = field(default_factory=list)
    named: int = 0  # of the kills, at named steps
    full_disks: list[str] = field(default_factory=list)
    compared: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        sizes = ", ".join(f"{k} {v}" for k, v in self.compared.items())
        return (
            f"{self.name}: {len(self.kills)} kills ({self.named} of {len(self.steps)} named "
            f"steps, {len(self.kills) - self.named} of {self.fs_steps} file system steps), "
            f"{len(self.full_disks)} full disks; compared {sizes}"
        )


def _fresh(op: Operation, work: Path, name: str) -> Path:
    target = work / name
    shutil.copytree(op.template, target, symlinks=True)
    if op.database is not None:
        op.database.copy_for(target)
    return target


def _env(at: Path, **more: str) -> dict[str, str]:
    """A run's environment: its database, when not its home's own SQLite, and `more`."""
    url = database_url(at)
    return {**({DATABASE_URL_ENV: url} if url else {}), **more}


def _discard(op: Operation, at: Path) -> None:
    if op.database is not None:
        op.database.drop(at)
    shutil.rmtree(at)


def _count(value: Any) -> int:
    if isinstance(value, dict):
        return sum(_count(v) for v in value.values())
    if isinstance(value, list | tuple):
        return len(value)
    return 1


def _kind(step: str) -> str:
    """Steps of one kind leave the same kind of state: files written one after another (each
    whole, by gpdpr.durable), or the same first two words."""
    return "write" if step.startswith("write ") else " ".join(step.split()[:2])


def _distinct(steps: list[str], until: str | None = None) -> list[int]:
    """The named steps to cut at (numbered from 1): every one, except that of a run of steps of
    one kind (the same first two words: "lake table allergies committed", "lake table
    appointments committed", ...) only the first and the last, which leave the same kind of
    state as those between; and none from the first step named `until` on."""
    if until in steps:
        steps = steps[: steps.index(until)]
    kinds = [_kind(step) for step in steps]
    return [
        n + 1
        for n, kind in enumerate(kinds)
        if n in (0, len(kinds) - 1) or kind != kinds[n - 1] or kind != kinds[n + 1]
    ]


def hammer(
    op: Operation,
    work: Path,
    sampled: int = 2,
    full: int = 1,
    seed: int = 20261206,
    named: int | None = None,
) -> Report:
    """Cut `op` at its named steps (see _distinct; a seeded sample of `named` of them when
    given) and at `sampled` seeded file system steps; fail it as a full disk would at `full`
    seeded steps of either kind. After each, the state it
    left is checked (`op.between`), the command is run again, and the result must equal the
    clean run's. Returns what was done, for the report."""
    work.mkdir(parents=True, exist_ok=True)
    trace, fs_trace = work / "steps.txt", work / "fs-steps.txt"

    def clean_run() -> dict[str, Any]:
        """The operation run uncut, its steps traced: what every cut run must come back to."""
        trace.unlink(missing_ok=True)
        fs_trace.unlink(missing_ok=True)
        clean = _fresh(op, work, "clean")
        environment = {durable.TRACE: str(trace), FS_ROOT: str(clean), FS_TRACE: str(fs_trace)}
        done = run(op.command(clean), _env(clean, **environment), work)
        assert done.code in op.ok, f"{op.name}: the clean run failed:\n{done.output}"
        found = op.observe(clean)
        _discard(op, clean)
        return found

    day, first = _on_one_day(clean_run)
    clean_on = {day: first}  # the clean run's result by the UTC day it ran on
    expected = first
    steps = trace.read_text().splitlines() if trace.exists() else []
    fs_total = int(fs_trace.read_text())
    report = Report(op.name, steps, fs_total, compared={k: _count(v) for k, v in expected.items()})
    chance = random.Random(seed)
    cuts = _distinct(steps, op.until)
    if named is not None:
        cuts = sorted(chance.sample(cuts, min(named, len(cuts))))
    points = [(durable.CRASH_AT, n, steps[n - 1]) for n in cuts]
    report.named = len(points)
    points += [
        (FS_KILL_AT, n, f"file system step {n}")
        for n in sorted(chance.sample(range(1, fs_total + 1), min(sampled, fs_total)))
    ]
    fulls = [(durable.FULL_AT, n, steps[n - 1]) for n in range(1, len(steps) + 1)]
    fulls += [(FS_FULL_AT, n, f"file system step {n}") for n in range(1, fs_total + 1)]
    fulls = sorted(chance.sample(fulls, min(full, len(fulls))), key=lambda p: (p[0], p[1]))

    for variable, n, what in points + fulls:
        kill = variable in (durable.CRASH_AT, FS_KILL_AT)
        label = f"{op.name}, {'killed' if kill else 'disk full'} at {what} ({variable}={n})"

        day, got = _on_one_day(partial(_cut_and_again, op, work, variable, n, label))
        if day not in clean_on:  # midnight passed since the clean run: compare like with like
            clean_on[day] = _on_one_day(clean_run)[1]
        expected = clean_on[day]
        (report.kills if kill else report.full_disks).append(what)
        for key in expected:
            assert got[key] == expected[key], (
                f"{label}: {key} differs after the re-run: {_difference(expected[key], got[key])}"
            )
    return report


def _cut_and_again(op: Operation, work: Path, variable: str, n: int, label: str) -> dict[str, Any]:
    """`op` cut at step `n` (as `variable` says how), then run again: what it came back to."""
    kill = variable in (durable.CRASH_AT, FS_KILL_AT)
    home = _fresh(op, work, f"{variable.lower()}-{n}")
    cut = run(op.command(home), _env(home, **{variable: str(n), FS_ROOT: str(home)}), work)
    if kill:
        assert cut.code == KILLED, f"{label}: not killed ({cut.code}):\n{cut.output}"
    else:
        assert "Traceback" not in cut.output, f"{label}: a traceback, not a message:\n{cut.output}"
        assert cut.code in (*op.ok, 2), f"{label}: exit {cut.code}:\n{cut.output}"
        if cut.code == 2:
            assert "disk is full" in cut.output, f"{label}: no message:\n{cut.output}"
    if op.between is not None:
        op.between(home)
    again = run((op.again or op.command)(home), _env(home), work)
    assert "Traceback" not in again.output, f"{label}: the re-run crashed:\n{again.output}"
    assert again.code in op.again_ok, f"{label}: the re-run failed:\n{again.output}"
    found = op.observe(home)
    _discard(op, home)
    return found


def _on_one_day(work: Callable[[], T]) -> tuple[date, T]:
    """`work` done within one UTC day, and that day: done again if midnight passed while it
    ran. A day-counted event (an opt-out, a pseudonym look-up) is published only once its day
    is over, so what a run leaves depends on the day it ran and on whether it ran across a
    midnight; a cut run and the clean run it must equal are compared on the same day."""
    day = datetime.now(UTC).date()
    found = work()
    if datetime.now(UTC).date() != day:
        day = datetime.now(UTC).date()
        found = work()  # a run takes minutes at most: no second midnight within it
    return day, found


def _difference(expected: Any, got: Any) -> str:
    """What a clean run has that the re-run has not, and the other way round."""
    if isinstance(expected, list) and isinstance(got, list):
        missing = [x for x in expected if x not in got]
        extra = [x for x in got if x not in expected]
        return f"missing {missing[:5]}, extra {extra[:5]}"
    return f"expected {expected!r:.800}, got {got!r:.800}"


def _used(disk: Path) -> int:
    """Bytes in use on the file system mounted at `disk`."""
    stat = os.statvfs(disk)
    return (stat.f_blocks - stat.f_bfree) * stat.f_frsize


def _mount(folder: Path, size: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
    )
    return done.returncode == 0


def _unmount(folder: Path) -> None:
    # Lazily if busy (a handle the parent has not let go of yet): never left mounted.
    if subprocess.run(["umount", str(folder)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(folder)], check=True)


PAGE = 4096
ROOMY = 1 << 30  # a tmpfs takes memory only for what is written to it


def squeeze(op: Operation, work: Path, fractions: tuple[float, ...] = (0.3,)) -> list[str]:
    """The operation on a small disk of its own (a tmpfs the test mounts): room for what it
    starts with and a fraction of what it adds. It must stop with a message or finish, and,
    once the disk is grown, a re-run must end as a clean run. Returns what was done; empty when
    this machine does not let the test mount (not root), where the full disks that `hammer`
    simulates at each step stand alone."""
    work.mkdir(parents=True, exist_ok=True)
    roomy = work / "roomy"
    if not _mount(roomy, ROOMY):
        return []
    try:
        empty = _used(roomy)
        shutil.copytree(op.template, roomy / "at", symlinks=True)
        before = _used(roomy) - empty
        done = run(op.command(roomy / "at"), where=work)
        assert done.code in op.ok, f"{op.name}: the clean run failed:\n{done.output}"
        # What the run added; an erasure can end smaller than it began (its vacuum deletes the
        # old files), and the disk must still hold what it starts with.
        grown = max(0, _used(roomy) - empty - before)
        expected = op.observe(roomy / "at")
    finally:
        _unmount(roomy)
    report = []
    for fraction in fractions:
        disk = work / f"disk-{fraction}"
        size = -(-(before + int(grown * fraction)) // PAGE) * PAGE
        assert _mount(disk, size)
        try:
            shutil.copytree(op.template, disk / "at", symlinks=True)
            cut = run(op.command(disk / "at"), where=work)
            label = f"{op.name} on a {size:,} byte disk"
            assert "Traceback" not in cut.output, f"{label}: a traceback:\n{cut.output}"
            assert cut.code in (*op.ok, 2), f"{label}: exit {cut.code}:\n{cut.output}"
            if cut.code == 2:
                assert "disk is full" in cut.output, f"{label}: no message:\n{cut.output}"
            subprocess.run(["mount", "-o", f"remount,size={ROOMY}", str(disk)], check=True)
            again = run((op.again or op.command)(disk / "at"), where=work)
            assert "Traceback" not in again.output, f"{label}: the re-run:\n{again.output}"
            assert again.code in op.again_ok, f"{label}: the re-run failed:\n{again.output}"
            got = op.observe(disk / "at")
            for key in expected:
                assert got[key] == expected[key], (
                    f"{label}: {key} differs: {_difference(expected[key], got[key])}"
                )
            report.append(f"{size:,} bytes: {'full' if cut.code == 2 else 'enough'}")
        finally:
            _unmount(disk)
    return report
