"""Whether a verified package may speak for its practice: the acceptance check after the
signature (gpdpr.collect.verify) and before anything of it is applied.

A package is refused if it is dated in the future (its creation or its extract time later than
the centre's clock allows), or if the key that signed it is not, by the custodian's signed
practice register (gpdpr.custodian.register), the practice's key when the package was made and
signed (its created_at): issued before then, not replaced before then, and never revoked. The
supplier's extract time can be earlier than the kit (an extract file made before a key rotation and
packaged after), so the signing time is the one the key must cover.

An accepted package then speaks only for its own patients (`type1_statements`): what it says of
anyone else's Type 1 opt-out is not heard. Whose statement outranks whose is the registry's rule
(gpdpr.optout.registry.decide).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gpdpr.collect.verify import Package
from gpdpr.custodian.register import read_register
from gpdpr.errors import UserError
from gpdpr.practice.kit import SIGNING_PUB, public_key_id, read_public_key
from gpdpr.practice.package import PackageError

CLOCK_SKEW = timedelta(minutes=5)  # a practice's clock may run a little ahead, never a day


def authorise(package: Package, keys: Path, now: datetime | None = None) -> None:
    """PackageError with the reason the package may not speak for its practice."""
    now = now or datetime.now(UTC)
    name, ods = package.folder.name, package.practice
    created = datetime.fromisoformat(str(package.manifest["created_at"])).astimezone(UTC)
    for what, when in (("made", created), ("extracted", package.until)):
        if when > now + CLOCK_SKEW:
            raise PackageError(
                f"package {name} from {ods} says it was {what} at {when:%Y-%m-%dT%H:%M:%SZ}, in "
                "the future: refused (a future date would outrank every later change). Ask "
                f"{ods} to check its clock and extract again"
            )
    try:
        signer = public_key_id(read_public_key(keys / "practices" / ods / SIGNING_PUB))
        entries = [e for e in read_register(keys) if e.key_id == signer]
    except UserError as exc:
        raise PackageError(f"package {name}: {exc}") from None
    if not entries:
        raise PackageError(
            f"package {name}: the key that signed it is not in the custodian's practice register; "
            "refused"
        )
    reasons = [e.speaks_for(ods, created) for e in entries]
    if all(reasons):
        raise PackageError(
            f"package {name} may not speak for {ods}: {reasons[0]}; refused. If {ods}'s kit was "
            "lost, the custodian issues a new one and the practice extracts again"
        )


# Why a package's Type 1 statement about someone is not heard: a closed set, published as counts.
NOT_REGISTERED = "not_registered"
IGNORED_REASONS = (NOT_REGISTERED,)


@dataclass(frozen=True)
class Type1Statements:
    """The Type 1 statements of a package that the registry hears, and how many it does not,
    by reason (one of IGNORED_REASONS)."""

    active: list[str]
    withdrawn: list[str]
    ignored: Counter[str] = field(default_factory=Counter)


def type1_statements(package: Package) -> Type1Statements:
    """A practice may set or withdraw a Type 1 opt-out only for people it lists as registered
    with it at the package's extract time. A statement about anyone else is left out and counted;
    the package's records still load. Refusing the whole package would gain nothing against a
    rogue practice (the statement already has no effect) and would hold up an honest practice's
    whole feed over one patient who left it the day before."""
    registered = package.type1_registered
    heard = Type1Statements(
        [p for p in package.type1_active if p in registered],
        [p for p in package.type1_withdrawn if p in registered],
    )
    listed = len(package.type1_active) + len(package.type1_withdrawn)
    unheard = listed - len(heard.active) - len(heard.withdrawn)
    if unheard:
        heard.ignored[NOT_REGISTERED] = unheard
    return heard
