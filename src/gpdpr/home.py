"""The central service's home folder, as every central command takes it:

HOME/keys/      the custodian's key folder (owner-only)
HOME/lake/      the pseudonymised lake
HOME/rejected/  refused packages, each with the reason
HOME/central.db the opt-out registry, receipts, re-identification requests and the event record
                (or the database GPDPR_DATABASE_URL names)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DEFAULT_HOME = Path("gpdpr-home")
Home = Annotated[
    Path,
    typer.Option(
        envvar="GPDPR_HOME",
        help="The central service's home folder (keys/, lake/, rejected/, central.db).",
    ),
]
