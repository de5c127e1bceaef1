"""The central service's home folder, as every central command takes it:

HOME/keys/      the custodian's key folder (owner-only)
HOME/lake/      the pseudonymised lake
HOME/rejected/  refused packages, each with the reason
HOME/central.db the opt-out registry, receipts, re-identification requests and the event record
                (or the database GPDPR_DATABASE_URL names)
HOME/log/       the transparency log, as published (see gpdpr.transparency.store); its signing
                key is in HOME/keys/log/

Every central command takes the folder through `Home`, and so, in one place: a home that is not
there is refused (`gpdpr init` makes one), and the transparency log's two duties
(gpdpr.transparency.hook) are done: a log that does not verify stops the command before it
starts, and once it ends, whatever it recorded is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _central_command(ctx: typer.Context, home: Path) -> Path:
    from gpdpr.transparency.hook import around_command

    if not ctx.resilient_parsing:
        must_exist(home)
    return around_command(ctx, home)


def must_exist(home: Path) -> None:
    """A central command works on a home that is there: a mistyped --home would otherwise start
    an empty service and report success over it ("no one awaiting erasure")."""
    from gpdpr.terminal import fail

    if not home.is_dir():
        fail(
            f"there is no service home at {home}: check --home (or GPDPR_HOME). "
            f"To start a new service there, run `gpdpr init --home {home}` first"
        )


DEFAULT_HOME = Path("gpdpr-home")
Home = Annotated[
    Path,
    typer.Option(
        envvar="GPDPR_HOME",
        help="The central service's home folder (keys/, lake/, rejected/, central.db, log/).",
        callback=_central_command,
    ),
]
