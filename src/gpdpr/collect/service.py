"""The central collector's two jobs, as the commands run them: take in packages, and erase.
The places it works in are the service's home folder (see gpdpr.home); of the custodian's key
folder it reads practices' public keys only.

Whether `collect` may delete a package depends on whose copy it is. One inside the service's home
(HOME/inbox, or any folder there) is the service's own: refused, only its reason is kept in
rejected/; loaded (or found already loaded), it is deleted once the lake version holding it is
committed and its public record made, because the erasure cycle must reach every copy the
service keeps. One given from outside the home (an operator's transfer folder) is left exactly
where and as it was, loaded or refused, unless the operator asks for it to be removed
(`remove_inputs`, as the service's own would be); the command then says that those files hold
pseudonymised records the erasure cycle cannot reach. A package is known by its id in the lake's
ledger, so collecting the same folder again loads nothing twice.

Records are made from committed state, so a run killed at any point leaves them exact after the
next: a refusal's `package.refused` event from the refused package staged whole in rejected/
(see gpdpr.collect.refusals); a load's `package.loaded` events from the lake version that loaded
it (what it loaded is in that version's details), recorded under the lake's lock for every load
version after the last one recorded; an erasure's deletion receipts from the erase version's
answers, once the vacuum after it has finished (see gpdpr.collect.erase).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from gpdpr import db, durable
from gpdpr import spec as specification
from gpdpr.collect.authority import authorise, type1_statements
from gpdpr.collect.codes import CentreCodes, check_codes
from gpdpr.collect.erase import ANSWERS, Erasure, erase
from gpdpr.collect.erase_beyond import Beyond, sweep
from gpdpr.collect.fields import CentreFields, check_fields
from gpdpr.collect.load import Loaded, Progress, load
from gpdpr.collect.numbers import CentreNumbers, check_numbers
from gpdpr.collect.received import forget, index_loads
from gpdpr.collect.refusals import Refused, finish, refuse
from gpdpr.collect.refused import REFUSED_NOTE as REFUSED_NOTE
from gpdpr.collect.verify import Package, check
from gpdpr.db.events import record
from gpdpr.db.models import DeletionReceipt, Event
from gpdpr.errors import UserError
from gpdpr.lake.compact import Compaction, compact
from gpdpr.lake.store import Lake, LakeVersion
from gpdpr.optout.registry import Registry
from gpdpr.practice.package import PackageError
from gpdpr.terminology import store as terminology

ACTOR = "collector"


@dataclass(frozen=True)
class Central:
    """The central service's places."""

    home: Path
    key_folder: Path | None = None  # the custodian's, when it is not HOME/keys

    @property
    def keys(self) -> Path:
        return self.key_folder or self.home / "keys"

    @property
    def lake_folder(self) -> Path:
        return self.home / "lake"

    @property
    def rejected(self) -> Path:
        return self.home / "rejected"

    def engine(self) -> sa.Engine:
        self.home.mkdir(parents=True, exist_ok=True)
        return db.connect(db.url_for_home(self.home))

    def lake(self) -> Lake:
        return Lake.open(self.lake_folder)


@dataclass
class Collection:
    """What one `collect` run did."""

    version: LakeVersion | None
    loaded: list[Loaded] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)
    type1_set: int = 0
    type1_withdrawn: int = 0
    left: list[Path] = field(default_factory=list)  # given from outside the home, left as they were


def collect(
    central: Central,
    folders: list[Path],
    workers: int = 4,
    on_progress: Progress | None = None,
    on_checked: Callable[[Path], None] | None = None,
    remove_inputs: bool = False,
) -> Collection:
    """Verify every package, refuse the untrustworthy, load the rest in one lake version.
    Packages inside the home are deleted once loaded or refused; those from outside it only
    with `remove_inputs` (see the module's docstring)."""
    with durable.disk_errors("collecting", COLLECT_ADVICE):
        return _collect(central, folders, workers, on_progress, on_checked, remove_inputs)


def owned(central: Central, folder: Path) -> bool:
    """Whether a package is the service's own copy: inside its home (links followed)."""
    return folder.resolve().is_relative_to(central.home.resolve())


def _collect(
    central: Central,
    folders: list[Path],
    workers: int,
    on_progress: Progress | None,
    on_checked: Callable[[Path], None] | None,
    remove_inputs: bool,
) -> Collection:
    if not (central.keys / "practices").is_dir():
        # The centre's own mistake, not the packages': refuse to judge them at all.
        raise UserError(
            f"no practice keys at {central.keys / 'practices'}: the collector checks each package "
            "against its practice's registered key; give the custodian's key folder"
        )
    lake = central.lake()
    engine = central.engine()
    registry = Registry(engine)
    accepted = specification.released_versions()
    spec = specification.shipped()
    codes = CentreCodes.of(spec, terminology.active())
    fields = CentreFields.of(spec)
    numbers = CentreNumbers.of(spec)
    for parent in {folder.parent for folder in folders}:
        sweep_loaded(parent)

    removed = {folder for folder in folders if remove_inputs or owned(central, folder)}

    def verify(folder: Path) -> Package | Refused:
        try:
            package = check(folder, central.keys, accepted, lake.data)
            authorise(package, central.keys)
            check_codes(package, codes)
            check_fields(package, fields)
            check_numbers(package, numbers)
            return package
        except PackageError as exc:
            return Refused(folder, str(exc), None, left=folder not in removed)
        finally:
            if on_checked is not None:
                on_checked(folder)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        checked = list(pool.map(verify, folders))
    good = [c for c in checked if isinstance(c, Package)]
    result = Collection(None, refused=[c for c in checked if isinstance(c, Refused)])
    refuse(central.rejected, engine, result.refused)

    # The practices' Type 1 lists first: a dissent in this very batch keeps its own rows out.
    ignored: dict[str, dict[str, int]] = {}
    for package in good:
        heard = type1_statements(package)
        ignored[package.package_id] = dict(heard.ignored)
        sets, withdrawals = registry.apply_practice_assertions(
            package.package_id, package.practice, package.until, heard.active, heard.withdrawn
        )
        result.type1_set += sets
        result.type1_withdrawn += withdrawals
    if good:
        result.version, result.loaded = load(
            lake,
            good,
            registry.active_type1(),
            workers,
            on_progress,
            record=lambda: record_committed_loads(engine, lake),
            type1_ignored=ignored,
        )
        for package in good:
            if package.folder in removed:
                durable.step("package removed")
                _remove(package.folder)
    result.left = [folder for folder in folders if folder not in removed]
    return result


def finish_refusals(central: Central) -> int:
    """Complete (or discard) the refusals a killed run left staged; how many were completed.
    Run before the inbox is listed: a package staged whole has left it."""
    with durable.disk_errors("collecting", COLLECT_ADVICE):
        return finish(central.rejected, central.engine)


def record_committed_loads(engine: sa.Engine, lake: Lake) -> int:
    """Record `package.loaded` for every package of every load version committed after the
    last one recorded, and index who each brought in (gpdpr.collect.received); call with the
    lake's lock held, so no two runs record one version. Returns how many were recorded."""
    with Session(engine) as session, session.begin():
        last = session.scalar(
            sa.select(Event.details)
            .where(Event.kind == "package.loaded")
            .order_by(Event.id.desc())
            .limit(1)
        )
        after = int(last.get("lake_version") or 0) if isinstance(last, dict) else 0
        n = 0
        loads = [version for version in lake.versions(after) if version.operation == "load"]
        for version in loads:
            for summary in version.details.get("packages", []):
                record(
                    session,
                    "package.loaded",
                    ACTOR,
                    {**summary, "lake_version": version.number},
                )
                n += 1
        # Who each package brought in, for the patients' timelines: with the record or not at all.
        index_loads(session, lake, loads)
    if n:
        durable.step("package.loaded recorded")
    return n


def sweep_loaded(folder: Path) -> None:
    """Finish deleting what a killed run was deleting in `folder`: only a package whose load is
    committed and recorded is ever renamed so (see `_remove`), and the lake must be its only
    copy."""
    for loaded in folder.glob(".*.loaded-*"):
        shutil.rmtree(loaded, ignore_errors=True)


def _remove(folder: Path) -> None:
    """Delete a loaded package: first renamed out of the way in one step, so a crash part-way
    through deleting never leaves something that looks like a damaged package."""
    doomed = folder.with_name(f".{folder.name}.loaded-{os.getpid()}")
    try:
        folder.rename(doomed)
    except OSError:
        return
    shutil.rmtree(doomed, ignore_errors=True)


@dataclass
class Cycle:
    erasure: Erasure
    receipts: int
    compaction: Compaction | None = None
    beyond: Beyond = field(default_factory=Beyond)  # what was swept outside the lake


def erase_cycle(central: Central, workers: int = 4) -> Cycle:
    """The daily cycle's lake work: compact the small files the day's loads added, then erase
    everyone with an active Type 1 opt-out and give each new one a receipt (the receipts of a
    cycle killed before making them too). Compaction first, so the erasure's vacuum deletes the
    files it retired."""
    with durable.disk_errors("the erasure cycle", ERASE_ADVICE):
        lake = central.lake()
        engine = central.engine()
        registry = Registry(engine)
        compaction = compact(lake, workers=workers)  # also finishes a clean-up cut short
        # Everyone not yet receipted, before a cycle killed earlier is receipted below: the
        # collections index forgets them too, even if their rows went in that earlier cycle.
        unreceipted = set(registry.awaiting_receipt())
        # Beyond the lake first for them: once receipted, they are no longer found awaiting.
        beyond = sweep(central.home, central.keys, engine, unreceipted)
        earlier = receipt_committed(engine, registry, lake)
        awaiting = registry.awaiting_receipt()
        erasure = erase(lake, registry.active_type1(), awaiting, workers)
        if awaiting and erasure.version is None:
            raise UserError("the erasure cycle committed no lake version; nothing was receipted")
        with Session(engine) as session, session.begin():
            forget(session, unreceipted | set(awaiting) | set(erasure.by_person))
        durable.step("collections index erased")
        beyond.add(
            sweep(
                central.home,
                central.keys,
                engine,
                (set(awaiting) | set(erasure.by_person)) - unreceipted,
            )
        )
        receipts = earlier + receipt_committed(engine, registry, lake)
        return Cycle(erasure, receipts, compaction, beyond)


ERASE_ADVICE = (
    "The lake is as before the cycle or erased, and every receipt recorded is exact; free space "
    "(or fix the permissions) and run `gpdpr erase` again to finish"
)
COLLECT_ADVICE = (
    "The lake is as before this run or holds its packages whole, and no package was deleted "
    "before its record was made; free space (or fix the permissions) and run `gpdpr collect` "
    "again with the packages still waiting"
)


def receipt_committed(engine: sa.Engine, registry: Registry, lake: Lake) -> int:
    """Record a receipt for each opt-out an erase version answered whose vacuum has finished,
    with the rows that version removed, in that vacuum's version; the number recorded."""
    awaiting = {event: person for person, event in registry.awaiting_receipt().items()}
    if not awaiting:
        return 0
    with Session(engine) as session:
        last = session.scalar(sa.select(sa.func.max(DeletionReceipt.lake_version))) or 0
    finished = lake.vacuumed()
    pending: dict[int, dict[str, int]] = {}
    done: set[int] = set()
    batches: list[tuple[int, list[tuple[str, dict[str, int], int]]]] = []
    for version in lake.versions(last):
        if version.operation == "erase":
            for event, tables in version.details.get(ANSWERS, {}).items():
                answered = int(event)
                if answered in awaiting and answered not in done:
                    pending.setdefault(answered, {str(t): int(n) for t, n in tables.items()})
        elif version.operation == "vacuum" and version.readable_from == version.number:
            if finished is not None and version.number > finished:
                break  # its files are not all deleted yet: no receipt says they are
            if pending:
                batches.append(
                    (version.number, [(awaiting[e], t, e) for e, t in sorted(pending.items())])
                )
                done |= pending.keys()
                pending = {}
    for number, answers in batches:
        registry.record_receipts(answers, number)
        durable.step("receipts recorded")
    return sum(len(answers) for _, answers in batches)
