"""A change of the log's key is itself a logged, witnessed event. As a log operator would try it:
a log re-signed with a new key, a key change signed by a key that is not the log's, a key change
no quorum of witnesses co-signed, each refused by a verifier that kept nothing but the policy it
pinned (with the old key); and the honest rotation verifies end to end, for that same verifier
and for the witnesses, which follow the key only through the logged change."""

from __future__ import annotations

import shutil
import time
from array import array
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from gpdpr import cli, durable
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import cosigning, key_change, note, policy, store, witness
from gpdpr.transparency.merkle import Tree
from gpdpr.transparency.rotation import rotate
from gpdpr.transparency.verify import Source, verify

NOW = 1_800_000_000
runner = CliRunner()


def entries(n: int, start: int) -> list[dict[str, object]]:
    return [
        {"type": "tre.run", "details": {"run": f"RUN-{i:06d}"}} for i in range(start, start + n)
    ]


def grow(home: Path, n: int, at: int) -> cosigning.Gathered:
    writer = store.open_verified(home / "log", home / "keys")
    writer.append(entries(n, writer.size))
    gathered = cosigning.gather(writer, home / "keys", writer.sign(), at)
    writer.publish(gathered.checkpoint)
    return gathered


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A log of 6 entries, co-signed by two witnesses, both required."""
    home = tmp_path / "home"
    writer = store.open_verified(home / "log", home / "keys")
    for n in (1, 2):
        witness.create(
            tmp_path / f"w{n}", f"witness.example/w{n}", [cp.log_verifier(writer.key).vkey]
        )
        cosigning.enrol(home / "keys", tmp_path / f"w{n}", quorum=n)
    assert not grow(home, 6, NOW).notes
    return home


def pinned_at_start(home: Path) -> policy.Policy:
    found = cosigning.operator_policy(home / "keys")
    assert found is not None
    return found


def check(home: Path, pinned: policy.Policy, now: int) -> int:
    size: int = verify(Source(folder=home / "log"), pinned, now=now).size
    return size


def test_the_honest_rotation_verifies_end_to_end_for_a_verifier_that_pinned_the_old_key(
    home: Path,
) -> None:
    old_policy = pinned_at_start(home)
    kept = (home / "log" / store.CHECKPOINT).read_bytes()
    done = rotate(home, NOW + 60)
    assert not done.notes, done.notes
    assert (done.change, done.handover, done.checkpoint.size) == (6, 7, 8)
    assert done.old == old_policy.log and done.new != done.old
    # the old private key is gone; the new one signs; the operator's policy pins it
    assert cp.log_verifier(cp.load_or_create_key(home / "keys")) == done.new
    assert not (home / "keys" / "log" / cp.NEXT_KEY).exists()
    assert pinned_at_start(home).log == done.new
    # publish again: the witnesses co-sign what only the new key signed
    later = grow(home, 3, NOW + 120)
    assert not later.notes, later.notes
    assert later.checkpoint.key == done.new.id.hex()
    assert check(home, old_policy, NOW + 120) == 11  # the verifier that kept nothing but the old
    assert check(home, pinned_at_start(home), NOW + 120) == 11  # one that pinned the new key
    proved = verify(Source(folder=home / "log"), old_policy, kept, "kept", now=NOW + 120)
    assert proved.since is not None and proved.since.size == 6


def test_a_log_re_signed_with_a_new_key_and_no_logged_change_is_refused(
    home: Path, tmp_path: Path
) -> None:
    old_policy = pinned_at_start(home)
    root = _root(home, 6)
    shutil.rmtree(home / "keys" / "log")  # the operator starts again with a new key
    (home / "log" / store.PUBLIC_KEY).unlink()
    new_key = cp.load_or_create_key(home / "keys")
    resigned = cp.sign(new_key, 6, root)
    (home / "log" / store.PUBLIC_KEY).write_bytes(cp.public_file(new_key))
    (home / "log" / store.CHECKPOINT).write_bytes(resigned.to_bytes())
    assert store.read(home / "log").size == 6  # consistent with its own log.pub
    # the witnesses watch the old key: neither co-signs, whatever it is shown
    for n in (1, 2):
        follower = witness.open_witness(tmp_path / f"w{n}")
        with pytest.raises(witness.WitnessRefused) as refused:
            witness.add_checkpoint(follower, witness.request_body(6, [], resigned.to_bytes()), NOW)
        assert refused.value.status == 403
        data, offsets, tree = _public(home)
        assert witness.follow_from(follower, data, offsets, tree) == []
    with pytest.raises(cp.CheckpointError, match="witnessed key change"):
        check(home, old_policy, NOW + 60)


def _root(home: Path, size: int) -> bytes:
    root: bytes = store.read(home / "log").tree.root(size)
    return root


def _public(home: Path) -> tuple[bytes, array[int], Tree]:
    read = store.read(home / "log")
    return read.data, read.offsets, read.tree


def forged_rotation(
    home: Path,
    change: dict[str, object],
    cosigned_by: int,
    old: Ed25519PrivateKey,
    new: Ed25519PrivateKey,
) -> None:
    """What an operator writes to hand the log to `new` without the protocol: the change given,
    a handover checkpoint signed by `old` and co-signed by `cosigned_by` witnesses, then
    checkpoints by `new` alone."""
    folder = home / "log"
    writer = store.open_verified(folder, home / "keys")
    writer.append([change])
    handed = cp.sign(old, writer.size, writer.contents.tree.root())
    for n in range(1, cosigned_by + 1):
        follower = witness.open_witness(home.parent / f"w{n}")
        body = witness.request_body(
            6, writer.contents.tree.consistency_proof(6, handed.size), handed.to_bytes()
        )
        handed = handed.with_signature(witness.add_checkpoint(follower, body, NOW + 30))
    writer.append([key_change.handover_entry(6, handed, "2027-01-15T08:00:00Z")])
    writer.append(entries(2, writer.size))
    (folder / store.PUBLIC_KEY).write_bytes(cp.public_file(new))
    resigned = cp.sign(new, writer.size, writer.contents.tree.root())
    (folder / store.CHECKPOINT).write_bytes(resigned.to_bytes())


def test_a_key_change_signed_by_a_key_that_is_not_the_logs_is_refused(home: Path) -> None:
    old_policy = pinned_at_start(home)
    real = cp.load_or_create_key(home / "keys")
    thief, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    # names the log's real key as the old one, but the statement is signed by another key
    old_v, new_v = cp.log_verifier(real), cp.log_verifier(theirs)
    text = key_change.statement_text(cp.ORIGIN, 6, old_v, new_v)
    posing = note.Signature(cp.ORIGIN, old_v.id, thief.sign(text.encode()))
    statement = note.Note(text, (posing, note.sign(text, cp.ORIGIN, theirs)))
    change = key_change.change_entry(real, theirs, 6, "2027-01-15T08:00:00Z")
    change["details"]["statement"] = statement.render().decode()
    forged_rotation(home, change, 2, real, theirs)
    with pytest.raises(key_change.KeyChangeError, match="not signed by the old and new keys"):
        check(home, old_policy, NOW + 60)
    # nor will a witness follow it, though it co-signed a tree that includes it
    follower = witness.open_witness(home.parent / "w1")
    data, offsets, tree = _public(home)
    with pytest.raises(witness.WitnessRefused) as refused:
        witness.follow_from(follower, data, offsets, tree)
    assert refused.value.status == 422


def test_a_key_change_from_a_key_not_in_force_is_refused(home: Path) -> None:
    old_policy = pinned_at_start(home)
    real = cp.load_or_create_key(home / "keys")
    thief, theirs = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    forged_rotation(home, key_change.change_entry(thief, theirs, 6, "t"), 2, real, theirs)
    with pytest.raises(key_change.KeyChangeError, match="not the key in force"):
        check(home, old_policy, NOW + 60)


@pytest.mark.parametrize("cosigned_by", [0, 1])
def test_a_key_change_not_co_signed_by_a_quorum_is_refused(home: Path, cosigned_by: int) -> None:
    old_policy = pinned_at_start(home)  # quorum 2
    real = cp.load_or_create_key(home / "keys")
    new = Ed25519PrivateKey.generate()
    forged_rotation(home, key_change.change_entry(real, new, 6, "t"), cosigned_by, real, new)
    with pytest.raises(key_change.KeyChangeError, match=f"{cosigned_by} of the pinned witnesses"):
        check(home, old_policy, NOW + 60)


def test_a_rotation_without_a_quorum_switches_nothing_and_finishes_when_run_again(
    home: Path, tmp_path: Path
) -> None:
    old_policy = pinned_at_start(home)
    before = (home / "keys" / "log" / cp.PRIVATE_KEY).read_bytes()
    shutil.move(tmp_path / "w2", tmp_path / "w2-away")  # one witness cannot be reached
    with pytest.raises(key_change.RotationError, match="key is unchanged"):
        rotate(home, NOW + 60)
    assert (home / "keys" / "log" / cp.PRIVATE_KEY).read_bytes() == before
    assert (home / "log" / store.PUBLIC_KEY).read_bytes() == cp.public_file(
        cp.load_or_create_key(home / "keys")
    )
    with pytest.raises(policy.PolicyError, match="1 of the pinned witnesses"):
        check(home, old_policy, NOW + 60)  # as any publish while a witness is down
    shutil.move(tmp_path / "w2-away", tmp_path / "w2")
    done = rotate(home, NOW + 120)
    assert done.change == 6  # the change already logged, not written twice
    grow(home, 1, NOW + 180)
    assert check(home, old_policy, NOW + 180) == done.checkpoint.size + 1
    found = store.read(home / "log")
    kinds = [found.entry(s)["type"] for s in range(found.size)]
    assert kinds.count(key_change.CHANGE) == 1 and kinds.count(key_change.HANDOVER) == 1


def test_the_cli_rotates_the_key_and_a_witness_follows_it_from_the_public_files(
    home: Path, tmp_path: Path
) -> None:
    old_policy = tmp_path / "old-policy"
    old_policy.write_text(pinned_at_start(home).render())
    now = int(time.time())
    log_dir = str(home / "log")
    old_key = pinned_at_start(home).log.vkey
    for n in (3, 4):  # two more witnesses, of the old key, that the service does not ask
        witness.create(tmp_path / f"w{n}", f"witness.example/w{n}", [old_key])
        cosign = ["log", "witness", "cosign", "--state", str(tmp_path / f"w{n}")]
        assert runner.invoke(cli.app, [*cosign, "--log-dir", log_dir]).exit_code == 0
    grow(home, 1, now)
    rotated = runner.invoke(cli.app, ["log", "rotate-key", "--home", str(home)])
    assert rotated.exit_code == 0 and "the log's key is now" in rotated.output, rotated.output
    w3 = ["log", "witness", "cosign", "--state", str(tmp_path / "w3"), "--log-dir", log_dir]
    assert runner.invoke(cli.app, w3).exit_code == 0  # the checkpoint both keys signed
    grow(home, 1, now)  # now signed by the new key alone
    followed = runner.invoke(cli.app, w3)
    assert followed.exit_code == 0 and followed.output.startswith("— witness.example/w3 ")
    # w4 co-signed nothing that includes the change: it cannot tell it was logged, and refuses
    w4 = ["log", "witness", "cosign", "--state", str(tmp_path / "w4"), "--log-dir", log_dir]
    refused = runner.invoke(cli.app, w4)
    assert refused.exit_code == 2 and "REFUSED" in refused.output, refused.output
    ok = runner.invoke(
        cli.app, ["log", "verify", "--log-dir", log_dir, "--policy", str(old_policy)]
    )
    assert ok.exit_code == 0 and "co-signed by 2 of 2" in ok.output, ok.output


@pytest.mark.parametrize("step", ["key change recorded", "new log key published"])
def test_a_rotation_cut_once_the_change_is_final_is_finished_at_the_next_start(
    home: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    old_policy = pinned_at_start(home)

    def cut(name: str) -> None:
        if name == step:
            raise KeyboardInterrupt(name)  # as a kill would stop it

    monkeypatch.setattr(durable, "step", cut)
    with pytest.raises(KeyboardInterrupt):
        rotate(home, NOW + 60)
    monkeypatch.undo()
    with pytest.raises(policy.PolicyError, match="0 of the pinned witnesses"):
        check(home, old_policy, NOW + 60)  # as after any cut publish: not yet co-signed
    later = grow(home, 2, NOW + 120)  # the next start takes the new key up
    assert not later.notes, later.notes  # the witnesses follow, shown the recorded change
    assert later.checkpoint.key == pinned_at_start(home).log.id.hex()
    assert not (home / "keys" / "log" / cp.NEXT_KEY).exists()
    assert check(home, old_policy, NOW + 120) == 10
