"""The central service's home folder, as every central command takes it:

HOME/keys/      the custodian's key folder (owner-only)
HOME/lake/      the pseudonymised lake
HOME/rejected/  refused packages, each with the reason
HOME/central.db the opt-out registry, receipts, re-identification requests and the event record
                (or the database GPDPR_DATABASE_URL names)
HOME/log/       the transparency log, as published (see gpdpr.transparency.store); its signing
                key is in HOME/keys/log/

Every central command takes the folder through `Home`, and so, in one place, the transparency
log's two duties (gpdpr.transparency.hook): a log that does not verify stops the command before
it starts, and once it ends, whatever it recorded is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def _central_command(ctx: typer.Context, home: Path) -> Path:
    from gpdpr.transparency.hook import around_command

    return around_command(ctx, home)


DEFAULT_HOME = Path("gpdpr-home")
Home = Annotated[
    Path,
    typer.Option(
        envvar="GPDPR_HOME",
        help="The central service's home folder (keys/, lake/, rejected/, central.db, log/).",
        callback=_central_command,
    ),
]
