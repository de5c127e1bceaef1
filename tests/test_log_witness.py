"""Checkpoints any witness can co-sign, and a witness of our own: the C2SP signed-note and
checkpoint formats against golang.org/x/mod's published examples, and, as a log operator would try
it, a rolled-back log, a fork signed with the real key and a log re-signed with a new key, each
refused by a verifier that kept nothing but the pinned policy."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gpdpr import cli
from gpdpr.errors import UserError
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import cosigning, note, policy, store, witness
from gpdpr.transparency.merkle import Tree, leaf_hash
from gpdpr.transparency.verify import Source, verify

FIXTURE = json.loads(
    (Path(__file__).parent / "fixtures" / "c2sp" / "go-sumdb-note.json").read_text("utf-8")
)
NOW = 1_800_000_000
DAY = 86_400
runner = CliRunner()


# ---- the formats, against the Go reference's examples ----------------------------------------


def test_a_go_signed_note_is_read_signed_and_verified_byte_for_byte() -> None:
    verifier = note.parse_vkey(FIXTURE["vkey"])
    assert (verifier.name, verifier.id.hex(), verifier.vkey) == (
        "PeterNeumann",
        "c74f20a3",
        FIXTURE["vkey"],
    )
    found, private = note.signer_key(FIXTURE["skey"])
    assert found == verifier
    ours = note.Note(FIXTURE["text"], (note.sign(FIXTURE["text"], "PeterNeumann", private),))
    assert ours.render().decode() == FIXTURE["signed"]
    read = note.parse(FIXTURE["signed"].encode())
    note.verify(read, verifier)
    altered = note.parse(FIXTURE["signed"].replace("problem,", "problem;").encode())
    with pytest.raises(note.NoteError, match="altered"):
        note.verify(altered, verifier)
    for bad in FIXTURE["bad_vkeys"]:
        with pytest.raises(note.NoteError):
            note.parse_vkey(bad)


def test_a_checkpoint_body_is_the_tlog_checkpoint_the_go_reference_writes() -> None:
    tree = FIXTURE["tree"]
    root = leaf_hash(tree["record"].encode())  # the Go test's RecordHash
    assert cp.body(tree["size"], root, tree["origin"]) == tree["checkpoint"]
    assert cp.parse_body(tree["checkpoint"], "it") == (tree["origin"], tree["size"], root)


def test_a_cosignature_follows_tlog_cosignature_v1() -> None:
    key = Ed25519PrivateKey.generate()
    text = cp.body(5, bytes(32))
    made = note.cosign(text, "witness.example/w1", key, NOW)
    public = note.raw_public(key.public_key())
    # key ID: SHA-256(name || "\n" || 0x04 || key)[:4]; data: 8-byte big-endian time, signature
    assert made.id == note.key_id("witness.example/w1", 0x04, public)
    assert made.data[:8] == NOW.to_bytes(8, "big") and len(made.data) == 72
    message = b"cosignature/v1\ntime 1800000000\n" + text.encode()
    key.public_key().verify(made.data[8:], message)
    verifier = note.verifier_for("witness.example/w1", key.public_key(), note.COSIGNATURE)
    signed = note.Note(text, (made,))
    assert note.cosignature_time(signed, verifier) == NOW
    moved = note.Signature(made.name, made.id, (NOW + 1).to_bytes(8, "big") + made.data[8:])
    assert note.cosignature_time(note.Note(text, (moved,)), verifier) is None


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_are_read_as_a_checkpoint_or_refused_clearly(data: bytes) -> None:
    try:
        cp.parse(data, "it")
    except UserError as exc:
        assert str(exc).startswith("it")


# ---- a log, its witness, and what an operator might try ---------------------------------------


def entries(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"type": "tre.run", "details": {"run": f"RUN-{i:06d}"}} for i in range(start, start + n)
    ]


def grow(writer: store.Writer, keys: Path, n: int, at: int) -> cosigning.Gathered:
    writer.append(entries(n, writer.size))
    gathered = cosigning.gather(writer, keys, writer.sign(), at)
    writer.publish(gathered.checkpoint)
    return gathered


@pytest.fixture
def log(tmp_path: Path) -> tuple[store.Writer, Path, policy.Policy]:
    keys = tmp_path / "keys"
    writer = store.open_verified(tmp_path / "log", keys)
    log_key = cp.log_verifier(writer.key).vkey
    for n in (1, 2):
        witness.create(tmp_path / f"w{n}", f"witness.example/w{n}", [log_key])
        pinned = cosigning.enrol(keys, tmp_path / f"w{n}", quorum=n)
    grow(writer, keys, 6, NOW)
    return writer, keys, pinned


def pinned_verify(folder: Path, pinned: policy.Policy, now: int = NOW) -> int:
    size: int = verify(Source(folder=folder), pinned, now=now).size
    return size


def test_an_honest_log_is_co_signed_as_it_grows_and_verifies_with_the_quorum(
    log: tuple[store.Writer, Path, policy.Policy],
) -> None:
    writer, keys, pinned = log
    assert pinned_verify(writer.contents.folder, pinned) == 6
    gathered = grow(writer, keys, 3, NOW + 60)
    assert not gathered.notes
    checked = verify(Source(folder=writer.contents.folder), pinned, now=NOW + 60)
    assert checked.size == 9 and set(checked.witnesses) == {
        "witness.example/w1",
        "witness.example/w2",
    }
    published = (writer.contents.folder / store.CHECKPOINT).read_text("utf-8")
    assert published.count("\n— ") == 3  # the log's signature and two cosignatures


def test_a_folder_witness_whose_key_was_replaced_is_not_published_as_cosigning(
    log: tuple[store.Writer, Path, policy.Policy], tmp_path: Path
) -> None:
    """Someone with the witness's folder but not its key writes a key of their own there: its
    cosignatures are not the enrolled witness's, so none is published."""
    writer, keys, pinned = log
    folder = tmp_path / "w1"
    (folder / witness.KEY).unlink()
    rogue = Ed25519PrivateKey.generate()
    (folder / witness.KEY).write_bytes(
        rogue.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    gathered = grow(writer, keys, 2, NOW + 60)
    assert any("w1" in n and "enrolled with" in n for n in gathered.notes), gathered.notes
    published = (writer.contents.folder / store.CHECKPOINT).read_text("utf-8")
    rogue_id = note.verifier_for("witness.example/w1", rogue.public_key(), note.COSIGNATURE)
    assert published.count("\n— ") == 2  # the log's own and w2's only
    assert f" {base64.b64encode(rogue_id.id).decode()[:5]}" not in published
    with pytest.raises(UserError):  # the quorum of two is not met: a verifier says so
        pinned_verify(writer.contents.folder, pinned, NOW + 60)


def test_a_rolled_back_log_is_refused_by_a_verifier_that_kept_nothing(
    log: tuple[store.Writer, Path, policy.Policy], tmp_path: Path
) -> None:
    writer, keys, pinned = log
    folder = writer.contents.folder
    old = (folder / store.CHECKPOINT).read_bytes()
    old_entries = (folder / store.ENTRIES).read_bytes()
    grow(writer, keys, 4, NOW + 3_600)
    assert pinned_verify(folder, pinned, NOW + 3_600) == 10
    # the operator truncates the log to 6 and signs that again with the real key
    rolled = tmp_path / "rolled"
    shutil.copytree(folder, rolled)
    (rolled / store.ENTRIES).write_bytes(old_entries)
    with pytest.raises(store.LogDamaged, match="truncated"):
        store.read(rolled)  # the checkpoint signs 10: so it signs 6 again
    (rolled / store.CHECKPOINT).write_bytes(old)
    resigned = store.open_verified(rolled, keys)
    gathered = cosigning.gather(resigned, keys, resigned.sign(), NOW + 2 * DAY)
    refusals = [n for n in gathered.notes if n.startswith("witness")]
    assert len(refusals) == 2 and all("beyond" in n for n in refusals), refusals
    resigned.publish(gathered.checkpoint)
    with pytest.raises(policy.PolicyError, match="0 of the pinned witnesses"):
        pinned_verify(rolled, pinned, NOW + 2 * DAY)
    # or it replays the old checkpoint with its old cosignatures: too old to count
    (rolled / store.CHECKPOINT).write_bytes(old)
    with pytest.raises(policy.PolicyError, match="only long ago"):
        pinned_verify(rolled, pinned, NOW + 2 * DAY)


def test_a_fork_signed_with_the_real_key_is_refused(
    log: tuple[store.Writer, Path, policy.Policy],
) -> None:
    writer, keys, pinned = log
    folder = writer.contents.folder
    lines = (folder / store.ENTRIES).read_bytes().splitlines()
    lines[2] = lines[2].replace(b"RUN-000002", b"RUN-HIDDEN")
    (folder / store.ENTRIES).write_bytes(b"".join(line + b"\n" for line in lines))
    forked = cp.sign(writer.key, 6, Tree(leaf_hash(line) for line in lines).root())
    (folder / store.CHECKPOINT).write_bytes(forked.to_bytes())
    fork = store.open_verified(folder, keys)
    gathered = grow(fork, keys, 2, NOW + 60)  # a fork of the same size, then grown
    refusals = [n for n in gathered.notes if n.startswith("witness")]
    assert len(refusals) == 2 and all("forked" in n for n in refusals), refusals
    assert store.read(folder).size == 8  # to the log's own key it all looks fine
    with pytest.raises(policy.PolicyError, match="rolled back or forked"):
        pinned_verify(folder, pinned, NOW + 60)


def test_a_log_re_signed_with_a_new_key_is_refused(
    log: tuple[store.Writer, Path, policy.Policy], tmp_path: Path
) -> None:
    writer, _, pinned = log
    folder = writer.contents.folder
    shutil.rmtree(tmp_path / "keys" / "log")  # the operator starts again with a new key
    new_key = cp.load_or_create_key(tmp_path / "keys")
    (folder / store.PUBLIC_KEY).write_bytes(cp.public_file(new_key))
    with pytest.raises(cp.CheckpointError):
        store.read(folder)  # the checkpoint (old key) no longer matches log.pub
    resigned = cp.sign(new_key, 6, writer.contents.tree.root())
    (folder / store.CHECKPOINT).write_bytes(resigned.to_bytes())
    assert store.read(folder).size == 6  # consistent with its own new log.pub
    with pytest.raises(cp.CheckpointError, match="not signed by this log's key"):
        pinned_verify(folder, pinned)
    w1 = witness.open_witness(tmp_path / "w1")
    body = witness.request_body(6, [], resigned.to_bytes())
    with pytest.raises(witness.WitnessRefused) as refused:
        witness.add_checkpoint(w1, body, NOW)
    assert refused.value.status == 403


def test_the_witness_answers_as_tlog_witness_says(
    log: tuple[store.Writer, Path, policy.Policy], tmp_path: Path
) -> None:
    writer, _, _ = log
    w1 = witness.open_witness(tmp_path / "w1")
    signed = (writer.contents.folder / store.CHECKPOINT).read_bytes()
    with pytest.raises(witness.Conflict) as stale:
        witness.add_checkpoint(w1, witness.request_body(0, [], signed), NOW)
    assert (stale.value.status, stale.value.size) == (409, 6)
    # the same tree again is fine (a fresh cosignature); a different root of the same size not
    again = witness.add_checkpoint(w1, witness.request_body(6, [], signed), NOW + 5)
    assert again.data[:8] == (NOW + 5).to_bytes(8, "big")
    other = cp.sign(writer.key, 6, bytes(32)).to_bytes()
    with pytest.raises(witness.WitnessRefused) as fork:
        witness.add_checkpoint(w1, witness.request_body(6, [], other), NOW)
    assert fork.value.status == 422
    with pytest.raises(witness.WitnessRefused) as bad:
        witness.add_checkpoint(w1, b"old x\n\n" + signed, NOW)
    assert bad.value.status == 400


def test_the_cli_runs_a_witness_and_verifies_with_a_pinned_policy(tmp_path: Path) -> None:
    keys = tmp_path / "home" / "keys"
    writer = store.open_verified(tmp_path / "home" / "log", keys)
    writer.append(entries(3))
    writer.sign()
    log_key = cp.log_verifier(writer.key).vkey
    made = runner.invoke(
        cli.app,
        [
            "log",
            "witness",
            "init",
            "--state",
            str(tmp_path / "w"),
            "--name",
            "w.example/a",
            "--log-key",
            log_key,
        ],
    )
    assert made.exit_code == 0 and made.output.startswith("w.example/a+"), made.output
    folder = str(tmp_path / "home" / "log")
    cosigned = runner.invoke(
        cli.app, ["log", "witness", "cosign", "--state", str(tmp_path / "w"), "--log-dir", folder]
    )
    assert cosigned.exit_code == 0 and cosigned.output.startswith("— w.example/a "), cosigned.output
    enrolled = runner.invoke(
        cli.app,
        ["log", "witness", "enrol", "--state", str(tmp_path / "w"), "--home", str(keys.parent)],
    )
    assert enrolled.exit_code == 0 and "quorum 1" in enrolled.output, enrolled.output
    policy_file = tmp_path / "pinned-policy"
    policy_file.write_text(enrolled.output)
    unwitnessed = runner.invoke(
        cli.app, ["log", "verify", "--log-dir", folder, "--policy", str(policy_file)]
    )
    assert unwitnessed.exit_code == 2 and "0 of the pinned witnesses" in unwitnessed.output
    grow(writer, keys, 1, int(__import__("time").time()))
    ok = runner.invoke(
        cli.app, ["log", "verify", "--log-dir", folder, "--policy", str(policy_file)]
    )
    assert ok.exit_code == 0 and "co-signed by 1 of 1" in ok.output, ok.output
    nothing_pinned = runner.invoke(cli.app, ["log", "verify", "--log-dir", folder])
    assert nothing_pinned.exit_code == 2 and "no trust policy is pinned" in nothing_pinned.output


# ---- the service's kept tree ------------------------------------------------------------------


def test_the_service_extends_its_kept_tree_and_gets_the_root_a_recomputation_gets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder, keys = tmp_path / "log", tmp_path / "keys"
    writer = store.open_verified(folder, keys)
    for batch in range(5):  # sizes that leave the tree complete and incomplete
        writer.append(entries(3 + 4 * batch, writer.size))
        writer.sign()
    recomputed = store.read(folder).tree  # every entry hashed again
    assert writer.contents.tree.root() == recomputed.root() and recomputed.size == 55
    hashed: list[bytes] = []

    def counting(line: bytes) -> bytes:
        hashed.append(line)
        return leaf_hash(line)

    monkeypatch.setattr(store, "leaf_hash", counting)
    reopened = store.open_verified(folder, keys)
    assert hashed == [] and reopened.contents.tree.root() == recomputed.root()
    reopened.append(entries(2, 55))
    reopened.sign()
    assert len(hashed) == 2
    again = store.open_verified(folder, keys)
    assert len(hashed) == 2 and again.contents.tree.levels() == store.read(folder).tree.levels()


def test_a_damaged_or_foreign_kept_tree_is_thrown_away_and_the_log_hashed_again(
    tmp_path: Path,
) -> None:
    folder, keys = tmp_path / "log", tmp_path / "keys"
    writer = store.open_verified(folder, keys)
    writer.append(entries(9))
    writer.sign()
    kept = folder.with_name(".log-tree")
    leaves = bytearray((kept / "0").read_bytes())
    leaves[40] ^= 1
    (kept / "0").write_bytes(bytes(leaves))
    (kept / "0").open("ab").write(b"\x00" * 64)  # and hashes a crash left beyond `covered`
    reopened = store.open_verified(folder, keys)
    assert reopened.contents.tree.root() == store.read(folder).tree.root()
    reopened.append(entries(1, 9))
    reopened.sign()
    assert store.open_verified(folder, keys).contents.tree.root() == store.read(folder).tree.root()


def test_the_portal_extends_the_log_it_holds_after_a_publish(tmp_path: Path) -> None:
    from gpdpr.portal.log import state_of

    folder = tmp_path / "log"
    writer = store.open_verified(folder, tmp_path / "keys")
    writer.append(entries(5))
    writer.sign()
    first = state_of(folder)
    assert first.contents is not None and first.contents.size == 5
    writer.append(entries(6, 5))
    writer.sign()
    grown = state_of(folder)
    assert grown.contents is not None and grown.checked == first.checked  # extended, not redone
    whole = store.read(folder)
    assert grown.contents.tree.root() == whole.tree.root() and grown.contents.size == 11
    assert [grown.contents.line(s) for s in range(11)] == [whole.line(s) for s in range(11)]
    assert list(grown.by_type["tre.run"]) == list(range(11))
    assert first.contents.size == 5  # the state pages already hold is left as it was
