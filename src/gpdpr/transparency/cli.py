"""`gpdpr log`: the transparency log. Anyone can verify it and prove an entry from the public
files alone (a copy of HOME/log, or its web address); the service publishes to it; a patient
sees which approved projects used their record."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from gpdpr.errors import UserError
from gpdpr.terminal import console, fail

if TYPE_CHECKING:
    from gpdpr.transparency.policy import Policy
    from gpdpr.transparency.verify import Source

log_app = typer.Typer(
    rich_markup_mode=None,
    help="The transparency log: every use of the data, publicly verifiable.",
    no_args_is_help=True,
)

# Not gpdpr.home.Home: these commands only read, and must work on a log the service refuses.
PlainHome = Annotated[
    Path,
    typer.Option("--home", envvar="GPDPR_HOME", help="The central service's home folder."),
]
LogDir = Annotated[
    Path | None,
    typer.Option(help="A folder of the log's public files (a copy of HOME/log)."),
]
Url = Annotated[
    str | None, typer.Option(help="The web address the log's public files are served from.")
]
DEFAULT_HOME = Path("gpdpr-home")


def _source(home: Path, log_dir: Path | None, url: str | None) -> Source:
    from gpdpr.transparency.publish import log_folder
    from gpdpr.transparency.verify import Source

    if log_dir is not None and url is not None:
        fail("give --log-dir or --url, not both")
    if url is not None:
        return Source(url=url)
    return Source(folder=log_dir if log_dir is not None else log_folder(home))


PolicyFile = Annotated[
    Path | None,
    typer.Option(
        "--policy",
        help="The trust policy you pinned (log key, witnesses, quorum); by default the one "
        "shipped in this package. Never the log's own copy.",
    ),
]


def _policy(path: Path | None) -> Policy:
    from gpdpr.transparency import policy

    try:
        if path is not None:
            return policy.parse(path.read_text("utf-8"), str(path))
        found = policy.shipped()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror or exc}")
    except UserError as exc:
        fail(str(exc))
    if found is None:
        fail(
            "no trust policy is pinned in this package: give --policy FILE (the policy shown on "
            "the portal's verify page, kept by you, never fetched from the log itself)"
        )
    return found


@log_app.command("verify")
def verify_command(
    checkpoint: Annotated[
        Path | None,
        typer.Option(help="A checkpoint kept from before: prove the log only grew since."),
    ] = None,
    log_dir: LogDir = None,
    url: Url = None,
    policy: PolicyFile = None,
    home: PlainHome = DEFAULT_HOME,
) -> None:
    """Recompute the whole tree from the entries, check the checkpoint is signed by the pinned
    log key and freshly co-signed by a quorum of the pinned witnesses, and (with --checkpoint)
    prove the current log extends the one you kept."""
    from gpdpr.transparency.verify import verify

    pinned = _policy(policy)
    source = _source(home, log_dir, url)
    try:
        kept = checkpoint.read_bytes() if checkpoint is not None else None
    except OSError as exc:
        fail(f"cannot read {checkpoint}: {exc.strerror or exc}")
    try:
        result = verify(source, pinned, kept, str(checkpoint or ""))
    except UserError as exc:
        fail(f"the log at {source.name} does NOT verify: {exc}")
    console.print(
        f"[green]verified[/]: {source.name}: {result.entries:,} entries, the tree recomputed; "
        f"checkpoint of {result.size:,} entries, root {result.root.hex()}, signed by the pinned "
        f"log key and co-signed by {len(result.witnesses)} of {len(pinned.witnesses)} pinned "
        f"witnesses ({pinned.quorum} required): "
        + ", ".join(f"{name} at {_when(at)}" for name, at in sorted(result.witnesses.items()))
    )
    if result.since is not None:
        console.print(
            f"[green]consistent[/]: the log you kept ({result.since.size:,} entries, signed "
            f"{result.since.time}) is a prefix of this one: nothing was rewritten, deleted, "
            f"reordered or inserted (proof of {len(result.proof)} hashes checked)"
        )
    if result.entries > result.size:
        console.print(f"{result.entries - result.size} newer entries await the next checkpoint.")
    if result.torn:
        console.print(f"an append of {result.torn} bytes is unfinished at the end (ignored).")


def _when(timestamp: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@log_app.command("prove")
def prove_command(
    entry_id: Annotated[int, typer.Argument(help="The entry's number (its seq).")],
    log_dir: LogDir = None,
    url: Url = None,
    home: PlainHome = DEFAULT_HOME,
) -> None:
    """Show one entry and prove it is in the tree the current checkpoint signs."""
    import orjson

    from gpdpr.transparency.verify import prove

    source = _source(home, log_dir, url)
    try:
        found = prove(source, entry_id)
    except UserError as exc:
        fail(str(exc))
    console.print_json(orjson.dumps(found.entry).decode())
    console.print(f"leaf hash  {found.leaf.hex()}")
    for n, step in enumerate(found.proof):
        console.print(f"proof[{n}]   {step.hex()}")
    console.print(
        f"[green]included[/]: entry {entry_id} is in the signed tree of {found.size:,} entries, "
        f"root {found.root.hex()}"
    )


@log_app.command("show")
def show_command(
    last: Annotated[int, typer.Option(help="How many of the latest entries.")] = 20,
    log_dir: LogDir = None,
    url: Url = None,
    home: PlainHome = DEFAULT_HOME,
) -> None:
    """The latest entries, after verifying the log."""

    source = _source(home, log_dir, url)
    try:
        contents = source.read()
    except UserError as exc:
        fail(str(exc))
    table = Table("seq", "time", "type", "actor", "details")
    for seq in range(max(0, contents.size - last), contents.size):
        entry = contents.entry(seq)
        actor = entry["actor"]
        who = actor["role"] + (f" ({actor['organisation']})" if actor["organisation"] else "")
        details = ", ".join(f"{k}={v}" for k, v in entry["details"].items())
        table.add_row(str(seq), entry["time"], entry["type"], who, details[:100])
    console.print(table)


@log_app.command("publish")
def publish_command(home: PlainHome = DEFAULT_HOME) -> None:
    """Publish every event not yet in the log and sign a checkpoint (every central command
    does this as it ends; this is for a schedule, e.g. just after midnight for the day's
    opt-out counts)."""
    from gpdpr import db
    from gpdpr.transparency.publish import log_folder, publish

    try:
        done = publish(home, db.connect(db.url_for_home(home)))
    except UserError as exc:
        fail(str(exc))
    for note in done.notes:
        console.print(note)
    assert done.checkpoint is not None
    console.print(
        f"published {done.appended} entries to {log_folder(home)}; checkpoint of "
        f"{done.checkpoint.size:,} entries, root {done.checkpoint.root.hex()}"
        + (
            f"; {done.held} opt-out and look-up events wait for their day to end"
            if done.held
            else ""
        )
    )


@log_app.command("rotate-key")
def rotate_key_command(home: PlainHome = DEFAULT_HOME) -> None:
    """Change the log's signing key, as a logged and witnessed event: a change entry signed by
    the old key and the new, a checkpoint of it co-signed by a quorum of the witnesses, then
    the new key; verifiers that pinned the old key follow it, and so do the witnesses."""
    from gpdpr.transparency.rotation import rotate

    try:
        done = rotate(home)
    except UserError as exc:
        fail(str(exc))
    for note in done.notes:
        console.print(note)
    console.print(
        f"the log's key is now {done.new.vkey} (was {done.old.vkey}): the change is entry "
        f"{done.change}, witnessed in entry {done.handover}; checkpoint of "
        f"{done.checkpoint.size:,} entries signed by both. Publish the new policy "
        f"({home / 'keys' / 'log' / 'policy'}) with the package and on the portal",
        soft_wrap=True,
    )


@log_app.command("my-record")
def my_record_command(
    nhs_number: Annotated[str, typer.Option("--nhs-number", help="Your NHS number.")],
    home: PlainHome = DEFAULT_HOME,
) -> None:
    """Which approved projects' runs used your record, and your opt-out history (the number
    goes only to the custodian)."""
    from gpdpr.custodian.cli import open_custodian
    from gpdpr.portal.timeline import timeline
    from gpdpr.transparency.patient import record_uses

    try:
        custodian = open_custodian(home)
        pseudonym = custodian.pseudonym_for(nhs_number, "patient", "patient view")
        uses = record_uses(custodian, pseudonym, home)
        # First what is held at all: "nothing about you" is not the same as "nobody used it".
        console.print(timeline(custodian.engine, pseudonym, uses, {}).summary)
    except UserError as exc:
        fail(str(exc))
    if not uses.projects:
        console.print("No approved project's run has used your record.")
    for project in uses.projects:
        console.print(
            f"[bold]{project.title}[/] ({project.agreement}, {project.status}): "
            f"{', '.join(project.organisations)}; {project.purpose}; "
            f"{project.starts_on} to {project.ends_on}"
        )
        for run in project.runs:
            console.print(f"  run {run.reference} on {run.ran_on}, lake version {run.lake_version}")
    for kind, status in uses.opt_outs.items():
        name = {"type1": "Type 1 opt-out", "ndoo": "National Data Opt-out"}[kind]
        console.print(f"{name}: {status['state']}")
        for change in status["history"]:
            console.print(
                f"  {change['action']} {change['effective_at']:%Y-%m-%d} ({change['source']})"
            )


witness_app = typer.Typer(
    rich_markup_mode=None,
    help="A witness of the log: co-signs a checkpoint only if the log grew consistently.",
    no_args_is_help=True,
)
log_app.add_typer(witness_app, name="witness")
StateDir = Annotated[
    Path, typer.Option("--state", help="The witness's own folder (its key, state).")
]


@witness_app.command("init")
def witness_init(
    state: StateDir,
    name: Annotated[str, typer.Option(help="The witness's name, a schema-less URL.")],
    log_key: Annotated[
        list[str],
        typer.Option(
            "--log-key",
            metavar="VKEY",
            help="A log's verifier key (the text of its log.pub) to watch; repeat for more logs.",
        ),
    ],
) -> None:
    """Make a witness: its key and an empty state; prints its verifier key for policies."""
    from gpdpr.transparency.witness import create

    try:
        made = create(state, name, log_key)
    except UserError as exc:
        fail(str(exc))
    console.print(made.verifier.vkey, soft_wrap=True)


@witness_app.command("cosign")
def witness_cosign(
    state: StateDir,
    log_dir: LogDir = None,
    url: Url = None,
    home: PlainHome = DEFAULT_HOME,
) -> None:
    """Fetch the log's public files, and co-sign its checkpoint if it extends the last one this
    witness co-signed (the proof computed from the entries, then checked like any other)."""
    import time

    from gpdpr.transparency.witness import (
        Conflict,
        WitnessRefused,
        add_checkpoint,
        follow_from,
        open_witness,
        request_body,
    )

    source = _source(home, log_dir, url)
    try:
        witness = open_witness(state)
        contents = source.read()
        assert contents.checkpoint is not None
        signed, old = contents.checkpoint, 0
        for _ in range(3):
            if old > signed.size:
                fail(
                    f"REFUSED: this witness co-signed {old} entries; the log now signs only "
                    f"{signed.size}: it was rolled back"
                )
            proof = contents.tree.consistency_proof(old, signed.size)
            try:
                line = add_checkpoint(
                    witness, request_body(old, proof, signed.to_bytes()), int(time.time())
                )
                break
            except Conflict as conflict:
                old = conflict.size
            except WitnessRefused as refused:
                # Signed by a key it does not watch: only a key change the log records, in a
                # tree this witness co-signed, makes it watch another.
                if refused.status != 403 or not follow_from(
                    witness, contents.data, contents.offsets, contents.tree
                ):
                    raise
    except UserError as exc:
        fail(f"REFUSED: {exc}")
    console.print(line.line(), end="", soft_wrap=True)


@witness_app.command("enrol")
def witness_enrol(
    state: Annotated[
        Path | None, typer.Option("--state", help="The witness's own folder, if it is local.")
    ] = None,
    url: Annotated[
        str | None,
        typer.Option(help="The base URL of a witness served over HTTP (c2sp.org/tlog-witness)."),
    ] = None,
    vkey: Annotated[
        str | None,
        typer.Option(help="With --url: the witness's verifier key, as its operator gave it."),
    ] = None,
    quorum: Annotated[int, typer.Option(help="How many witnesses a verifier requires.")] = 1,
    home: PlainHome = DEFAULT_HOME,
) -> None:
    """Have the service ask this witness (its folder, or its URL and key) to co-sign each
    checkpoint, and write the policy verifiers pin (HOME/keys/log/policy; published as
    HOME/log/policy)."""
    from gpdpr.transparency.cosigning import enrol, enrol_url

    if (state is None) == (url is None) or (url is None) != (vkey is None):
        fail("give --state FOLDER, or --url URL and --vkey KEY")
    try:
        if url is not None and vkey is not None:
            pinned = enrol_url(home / "keys", url, vkey, quorum)
        else:
            assert state is not None
            pinned = enrol(home / "keys", state, quorum)
    except UserError as exc:
        fail(str(exc))
    console.print(pinned.render(), end="", soft_wrap=True)


@witness_app.command("serve")
def witness_serve(
    state: StateDir,
    port: Annotated[int, typer.Option(help="The port to listen on.")],
    host: Annotated[str, typer.Option(help="The address to listen on.")] = "127.0.0.1",
) -> None:
    """Serve the witness over HTTP (c2sp.org/tlog-witness POST /add-checkpoint), so any log
    that speaks the protocol can ask it to co-sign; put it behind HTTPS to expose it."""
    from gpdpr.transparency.witness import open_witness
    from gpdpr.transparency.witness_http import server

    try:
        served = server(open_witness(state), host, port)
    except UserError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}")
    console.print(f"witness listening on http://{host}:{served.server_address[1]}")
    try:
        served.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        served.server_close()
