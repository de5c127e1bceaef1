"""Every command that writes, of each family, stopped by a full disk at the first, a middle and
the last file system step it takes (counted from a traced run, as the crash harness counts them),
says so in one message (exit 2, "the disk is full"), never a traceback, and a run once there is
room succeeds. The families whose own steps were worded before (collect, erase, compaction, the
log, keys) are cut at every step in tests/test_crash_operations.py."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from crashes import FS_FULL_AT, FS_ROOT, FS_TRACE, run
from extracting import SERVICES, SESSION_ALLOWANCE
from gpdpr.custodian.service import running
from readers import practice_folders

NHS_NUMBER = "9434765919"


def _home(at: Path) -> None:
    assert run(["init", "--home", str(at / "home")], where=at).code == 0


def _words(*parts: str | Path) -> list[str]:
    return [str(p) for p in parts]


def _synth(at: Path) -> list[str]:
    return _words(
        "synth", "--out", at / "nation", "--practices", "1", "--patients", "40",
        "--format", "columnar", "--workers", "1", "--seed", "5",
    )  # fmt: skip


def _nation(at: Path) -> None:
    made = run(_synth(at), where=at)
    assert made.code == 0, made.output
    assert run(["custodian", "init", "--keys", str(at / "keys")], where=at).code == 0
    [practice] = practice_folders(at / "nation")
    # The extract asks the custodian's pseudonym service, so one serves these keys (the copies
    # of the kit each run gets hold the same practice key) for as long as the tests run.
    url = SERVICES.enter_context(running(at / "keys", SESSION_ALLOWANCE))
    issue = ["custodian", "issue-practice", practice.name, "--keys", str(at / "keys"), "--url", url]
    issued = run(issue)
    assert issued.code == 0, issued.output


def _extract(at: Path) -> list[str]:
    [practice] = practice_folders(at / "nation")
    keys = at / "keys" / "practices" / practice.name
    return _words("practice", "extract", practice, "--out", at / "package", "--keys", keys)


def _optout(at: Path) -> list[str]:
    return _words("optout", "set", "--nhs-number", NHS_NUMBER, "--type", "1", "--home", at / "home")


COMMANDS: dict[str, tuple[Callable[[Path], None] | None, Callable[[Path], list[str]]]] = {
    "init": (None, lambda at: ["init", "--home", str(at / "home")]),
    "synth": (None, _synth),
    "practice extract": (_nation, _extract),
    "optout set": (_home, _optout),
}


@pytest.mark.parametrize("family", list(COMMANDS))
def test_a_full_disk_stops_a_command_with_a_message_and_a_rerun_succeeds(
    family: str, tmp_path: Path
) -> None:
    prepare, command = COMMANDS[family]
    template = tmp_path / "template"
    template.mkdir()
    if prepare is not None:
        prepare(template)

    traced = tmp_path / "traced"
    shutil.copytree(template, traced)
    count = tmp_path / "steps.txt"
    done = run(command(traced), {FS_ROOT: str(traced), FS_TRACE: str(count)}, tmp_path)
    assert done.code == 0, f"{family}: the clean run failed:\n{done.output}"
    steps = int(count.read_text())
    assert steps > 0, f"{family} wrote nothing: nothing to fill"

    for at_step in sorted({1, (steps + 1) // 2, steps}):
        label = f"{family}, disk full at file system step {at_step} of {steps}"
        where = tmp_path / f"full-{at_step}"
        shutil.copytree(template, where)
        cut = run(command(where), {FS_ROOT: str(where), FS_FULL_AT: str(at_step)}, tmp_path)
        assert "Traceback" not in cut.output, f"{label}: a traceback:\n{cut.output}"
        assert cut.code == 2, f"{label}: exit {cut.code}:\n{cut.output}"
        # Worded by the command, or by the net every command has (gpdpr.durable.disk_messages).
        worded = ("disk is full", "No space left on device")
        assert any(w in cut.output for w in worded), f"{label}: no message:\n{cut.output}"
        assert "error: " in cut.output, f"{label}: not an error message:\n{cut.output}"
        again = run(command(where), where=tmp_path)
        assert again.code == 0, f"{label}: the run with room failed:\n{again.output}"
        shutil.rmtree(where)


def _sqlite_full() -> Exception:
    import sqlite3

    import sqlalchemy as sa

    return sa.exc.OperationalError(
        "INSERT", None, sqlite3.OperationalError("database or disk is full")
    )


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (lambda: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/srv/x"), "the disk is full"),
        (lambda: PermissionError(errno.EACCES, "Permission denied", "/srv/x"), "permission denied"),
        (lambda: OSError(errno.EROFS, os.strerror(errno.EROFS)), "the file system is read-only"),
        (_sqlite_full, "the disk is full"),
    ],
)
def test_a_disk_failure_no_command_worded_is_a_message_naming_the_command(
    error: Callable[[], Exception], words: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The net under every command (the command line's group): what no part of a command
    caught is still one message, naming the command and what to do."""
    from typer.testing import CliRunner

    from gpdpr.cli import app
    from gpdpr.optout.registry import Registry

    home = tmp_path / "home"
    assert CliRunner().invoke(app, ["init", "--home", str(home)]).exit_code == 0

    def fails(*_: object, **__: object) -> None:
        raise error()

    monkeypatch.setattr(Registry, "set", fails)
    argv = ["optout", "set", "--nhs-number", NHS_NUMBER, "--type", "1", "--home", str(home)]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"gpdpr optout set stopped: {words}" in result.output
    assert "run the command again" in result.output
    assert "Traceback" not in result.output


def test_other_errors_are_not_dressed_as_disk_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from gpdpr.cli import app
    from gpdpr.optout.registry import Registry

    home = tmp_path / "home"
    assert CliRunner().invoke(app, ["init", "--home", str(home)]).exit_code == 0

    def fails(*_: object, **__: object) -> None:
        raise OSError(errno.ECONNRESET, "reset")

    monkeypatch.setattr(Registry, "set", fails)
    argv = ["optout", "set", "--nhs-number", NHS_NUMBER, "--type", "1", "--home", str(home)]
    result = CliRunner().invoke(app, argv)
    assert isinstance(result.exception, ConnectionResetError)
    assert "stopped" not in result.output
