"""The transparency log: RFC 6962 / 9162 hashing and proofs against the Certificate Transparency
reference test vectors; a log on disk that detects every kind of tampering with its past, survives
a crash at any point of an append, and publishes each central event exactly once."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from databases import pseudonym
from governing import ADMIN, CHECKERS, LEEDS, act
from gpdpr.db.events import record
from gpdpr.db.models import Event
from gpdpr.optout.registry import Registry
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import cosigning, merkle, store, witness
from gpdpr.transparency.checkpoint import CheckpointError, load_or_create_key, sign
from gpdpr.transparency.merkle import ProofError, Tree, leaf_hash
from gpdpr.transparency.publish import KINDS, publish
from gpdpr.transparency.verify import Source, Verified, prove
from gpdpr.transparency.verify import verify as verify_pinned

# ---- RFC 6962 test vectors -------------------------------------------------------------------
# From the Certificate Transparency reference implementation's tests, as kept by
# github.com/transparency-dev/merkle (proof/verify_test.go): eight leaves, the root of the tree
# of each size, and known inclusion and consistency proofs.

LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
ROOTS = [
    bytes.fromhex(h)
    for h in (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    )
]


def hexes(*values: str) -> list[bytes]:
    return [bytes.fromhex(v) for v in values]


INCLUSION = [  # (leaf index, tree size, proof)
    (
        0,
        8,
        hexes(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        5,
        8,
        hexes(
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (2, 3, hexes("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")),
    (
        1,
        5,
        hexes(
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
]
CONSISTENCY = [  # (old size, new size, proof)
    (
        1,
        8,
        hexes(
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ),
    ),
    (
        6,
        8,
        hexes(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
    (
        2,
        5,
        hexes(
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ),
    ),
    (
        6,
        7,
        hexes(
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ),
    ),
]


def reference_tree() -> Tree:
    return Tree(leaf_hash(leaf) for leaf in LEAVES)


def test_the_tree_head_of_every_size_matches_the_reference_roots() -> None:
    assert merkle.Tree().root() == bytes.fromhex(
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    tree = reference_tree()
    assert [tree.root(size) for size in range(1, 9)] == ROOTS
    assert merkle.root_of(LEAVES[:5]) == ROOTS[4]


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_inclusion_proofs_match_the_reference_and_verify(
    index: int, size: int, proof: list[bytes]
) -> None:
    tree = reference_tree()
    assert tree.inclusion_proof(index, size) == proof
    merkle.verify_inclusion(leaf_hash(LEAVES[index]), index, size, proof, ROOTS[size - 1])


@pytest.mark.parametrize(("index", "size", "proof"), INCLUSION)
def test_a_wrong_inclusion_claim_is_refused(index: int, size: int, proof: list[bytes]) -> None:
    leaf, root = leaf_hash(LEAVES[index]), ROOTS[size - 1]
    other = leaf_hash(b"not this entry")
    flipped = [bytes([proof[0][0] ^ 8]) + proof[0][1:], *proof[1:]]
    for claim in (
        (leaf, index + 1, size, proof, root),
        (leaf, index, size * 2, proof, root),
        (other, index, size, proof, root),
        (leaf, index, size, proof, ROOTS[0] if size > 1 else ROOTS[1]),
        (leaf, index, size, flipped, root),
        (leaf, index, size, proof[:-1], root),
        (leaf, index, size, [*proof, root], root),
        (leaf, index, size, [root, *proof], root),
    ):
        with pytest.raises(ProofError):
            merkle.verify_inclusion(*claim)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_consistency_proofs_match_the_reference_and_verify(
    old: int, new: int, proof: list[bytes]
) -> None:
    tree = reference_tree()
    assert tree.consistency_proof(old, new) == proof
    merkle.verify_consistency(old, new, ROOTS[old - 1], ROOTS[new - 1], proof)


@pytest.mark.parametrize(("old", "new", "proof"), CONSISTENCY)
def test_a_wrong_consistency_claim_is_refused(old: int, new: int, proof: list[bytes]) -> None:
    first, second = ROOTS[old - 1], ROOTS[new - 1]
    for i in range(len(proof)):
        flipped = list(proof)
        flipped[i] = bytes([flipped[i][0] ^ 16]) + flipped[i][1:]
        with pytest.raises(ProofError):
            merkle.verify_consistency(old, new, first, second, flipped)
    for claim in (
        (old + 1, new, first, second, proof),
        (old, new * 2, first, second, proof),
        (old, new, second, first, proof),
        (old, new, ROOTS[(old) % 8] if old < 8 else ROOTS[0], second, proof),
        (old, new, first, second, []),
        (old, new, first, second, proof[:-1]),
        (old, new, first, second, [*proof, first]),
    ):
        with pytest.raises(ProofError):
            merkle.verify_consistency(*claim)


def test_every_proof_of_every_small_tree_verifies() -> None:
    tree = Tree(leaf_hash(str(i).encode()) for i in range(33))
    for size in range(1, 34):
        root = tree.root(size)
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            merkle.verify_inclusion(tree.leaf(index), index, size, proof, root)
        for old in range(size + 1):
            proof = tree.consistency_proof(old, size)
            merkle.verify_consistency(old, size, tree.root(old), root, proof)


# ---- the log on disk -------------------------------------------------------------------------


def entries(n: int, start: int = 0) -> list[dict[str, object]]:
    return [
        {"type": "tre.run", "time": "2026-12-05T10:00:00Z", "details": {"run": f"RUN-{i:06d}"}}
        for i in range(start, start + n)
    ]


NOW = 1_800_000_000


def witnessed(writer: store.Writer) -> None:
    """Sign the log and have the witnesses enrolled beside it co-sign."""
    keys = writer.contents.folder.parent / "keys"
    gathered = cosigning.gather(writer, keys, writer.sign(), NOW)
    writer.publish(gathered.checkpoint)


def verify(source: Source, kept: bytes | None = None, name: str = "") -> Verified:
    """Verify as a reader who pinned the policy of the log's one witness."""
    assert source.folder is not None
    pinned = cosigning.operator_policy(source.folder.parent / "keys")
    assert pinned is not None
    return verify_pinned(source, pinned, kept, name, NOW)


def made_log(tmp_path: Path, n: int = 10) -> Path:
    writer = store.open_verified(tmp_path / "log", tmp_path / "keys")
    log_key = cp.log_verifier(writer.key).vkey
    witness.create(tmp_path / "witness", "witness.example/w1", [log_key])
    cosigning.enrol(tmp_path / "keys", tmp_path / "witness", 1)
    writer.append(entries(n))
    witnessed(writer)
    return tmp_path / "log"


def lines(folder: Path) -> list[bytes]:
    path: Path = folder / store.ENTRIES
    return path.read_bytes().splitlines()


def rewrite(folder: Path, new_lines: list[bytes]) -> None:
    (folder / store.ENTRIES).write_bytes(b"".join(line + b"\n" for line in new_lines))


def canonical(entry: dict[str, object]) -> bytes:
    return orjson.dumps(entry, option=orjson.OPT_SORT_KEYS)


def test_a_log_verifies_from_its_public_files_and_proves_each_entry(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "checkpoint",
        "checkpoints",
        "entries.jsonl",
        "log.pub",
        "policy",
    ]
    checked = verify(Source(folder=folder))
    assert (checked.size, checked.entries) == (10, 10)
    found = prove(Source(folder=folder), 7)
    assert found.entry["details"] == {"run": "RUN-000007"} and found.entry["seq"] == 7
    with pytest.raises(Exception, match="no entry 10"):
        prove(Source(folder=folder), 10)
    key = (tmp_path / "keys" / "log" / "log.key").stat().st_mode & 0o777
    assert key == 0o600


def test_a_rewritten_entry_is_detected(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    changed = lines(folder)
    entry = orjson.loads(changed[3])
    entry["details"]["run"] = "RUN-999999"
    changed[3] = canonical(entry)  # still canonical, still numbered: only the hash can tell
    rewrite(folder, changed)
    with pytest.raises(store.LogDamaged, match="do not hash to the signed root"):
        verify(Source(folder=folder))


def test_a_deleted_entry_is_detected(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    rewrite(folder, lines(folder)[:4] + lines(folder)[5:])
    with pytest.raises(store.LogDamaged, match="should be entry 4 but is entry 5"):
        verify(Source(folder=folder))


def test_deleting_and_renumbering_is_still_detected(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    kept = lines(folder)[:4] + lines(folder)[5:]
    renumbered = [canonical({**orjson.loads(line), "seq": n}) for n, line in enumerate(kept)]
    rewrite(folder, renumbered)
    with pytest.raises(store.LogDamaged, match="truncated"):
        verify(Source(folder=folder))


def test_reordered_entries_are_detected_even_renumbered(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    swapped = lines(folder)
    swapped[2], swapped[6] = swapped[6], swapped[2]
    rewrite(folder, swapped)
    with pytest.raises(store.LogDamaged, match="should be entry 2 but is entry 6"):
        verify(Source(folder=folder))
    renumbered = [canonical({**orjson.loads(line), "seq": n}) for n, line in enumerate(swapped)]
    rewrite(folder, renumbered)
    with pytest.raises(store.LogDamaged, match="do not hash to the signed root"):
        verify(Source(folder=folder))


def test_an_inserted_entry_is_detected(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    old = lines(folder)
    forged = canonical({**entries(1, 500)[0], "seq": 3})
    shifted = [canonical({**orjson.loads(line), "seq": n + 1}) for n, line in enumerate(old[3:], 3)]
    rewrite(folder, [*old[:3], forged, *shifted])
    with pytest.raises(store.LogDamaged, match="do not hash to the signed root"):
        verify(Source(folder=folder))


def test_a_truncated_log_and_an_edited_checkpoint_are_detected(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    rewrite(folder, lines(folder)[:8])
    with pytest.raises(store.LogDamaged, match="signs 10 entries but the log holds only 8"):
        verify(Source(folder=folder))
    folder = made_log(tmp_path / "second")
    document = (folder / store.CHECKPOINT).read_bytes()
    (folder / store.CHECKPOINT).write_bytes(document.replace(b"\n10\n", b"\n9\n", 1))
    with pytest.raises(CheckpointError, match="altered after signing"):
        verify(Source(folder=folder))
    (folder / store.CHECKPOINT).unlink()
    with pytest.raises(store.LogDamaged, match="checkpoint was deleted"):
        verify(Source(folder=folder))


def test_corrupted_bytes_are_detected(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    data = bytearray((folder / store.ENTRIES).read_bytes())
    data[200] = 0xFF
    (folder / store.ENTRIES).write_bytes(bytes(data))
    with pytest.raises(store.LogDamaged, match=r"not JSON|canonical|hash"):
        verify(Source(folder=folder))


def test_a_rewrite_signed_again_by_the_service_is_caught_by_a_kept_checkpoint(
    tmp_path: Path,
) -> None:
    """The one tampering a signature cannot show: the operator rewrites the past and signs the
    result. Anyone who kept an earlier checkpoint proves the rewrite."""
    folder = made_log(tmp_path)
    kept = (folder / store.CHECKPOINT).read_bytes()
    changed = lines(folder)
    entry = orjson.loads(changed[1])
    entry["details"]["run"] = "RUN-HIDDEN"
    changed[1] = canonical(entry)
    rewrite(folder, changed)
    key = load_or_create_key(tmp_path / "keys")  # the insider signs the rewritten log
    forged = sign(key, 10, Tree(leaf_hash(line) for line in changed).root())
    (folder / store.CHECKPOINT).write_bytes(forged.to_bytes())
    writer = store.open_verified(folder, tmp_path / "keys")
    writer.append(entries(2, 10))
    signed = writer.sign()
    # alone, the new log looks fine to anyone trusting the log's key
    assert store.read(folder).checkpoint == signed
    # the witness refuses it, so a reader who pinned the witness refuses it too
    gathered = cosigning.gather(writer, tmp_path / "keys", signed, NOW)
    assert any("not a prefix" in n for n in gathered.notes), gathered.notes
    writer.publish(gathered.checkpoint)
    with pytest.raises(CheckpointError, match="0 of the pinned witnesses"):
        verify(Source(folder=folder))
    # and anyone who kept an earlier checkpoint proves the rewrite themselves
    with pytest.raises(ProofError, match="not a prefix"):
        since, now = cp.parse(kept, "kept"), store.read(folder)
        proof = now.tree.consistency_proof(since.size)
        merkle.verify_consistency(since.size, now.size, since.root, now.tree.root(), proof)


def test_a_kept_checkpoint_proves_an_honest_log_only_grew(tmp_path: Path) -> None:
    folder = made_log(tmp_path, 6)
    kept = (folder / store.CHECKPOINT).read_bytes()
    writer = store.open_verified(folder, tmp_path / "keys")
    writer.append(entries(5, 6))
    witnessed(writer)
    checked = verify(Source(folder=folder), kept, "kept.json")
    assert checked.since is not None and checked.since.size == 6 and checked.size == 11
    assert checked.proof  # a real proof was checked, not a shortcut


def test_a_crash_mid_append_leaves_a_valid_log(tmp_path: Path) -> None:
    folder = made_log(tmp_path, 5)
    complete = (folder / store.ENTRIES).read_bytes()
    torn = canonical({**entries(1, 5)[0], "seq": 5})[:17]
    (folder / store.ENTRIES).write_bytes(complete + torn)
    seen = verify(Source(folder=folder))  # a reader copes with an append in progress
    assert (seen.entries, seen.torn) == (5, 17)
    writer = store.open_verified(folder, tmp_path / "keys")
    assert writer.contents.notes and "unfinished" in writer.contents.notes[0]
    assert (folder / store.ENTRIES).read_bytes() == complete
    writer.append(entries(1, 5))
    witnessed(writer)
    assert verify(Source(folder=folder)).size == 6


def test_the_service_refuses_a_log_published_under_another_key(tmp_path: Path) -> None:
    folder = made_log(tmp_path)
    with pytest.raises(store.LogDamaged, match="not the public half"):
        store.open_verified(folder, tmp_path / "other-keys")


# ---- publishing the event record -------------------------------------------------------------


def published(home: Path) -> list[dict[str, Any]]:
    contents = store.read(home / "log")
    return [contents.entry(seq) for seq in range(contents.size)]


def test_every_event_kind_has_a_published_meaning() -> None:
    from gpdpr.db.events import KINDS as RECORDED
    from gpdpr.transparency.publish import DAILY, ERASURE

    assert set(RECORDED) == set(KINDS) | set(DAILY) | {ERASURE}


def test_events_are_published_once_with_actors_as_role_and_organisation(
    gov: sa.Engine, tmp_path: Path
) -> None:
    from governing import bring_to

    bring_to(gov, "submitted")
    first = publish(tmp_path, gov)
    again = publish(tmp_path, gov)
    assert first.appended > 0 and again.appended == 0
    log = published(tmp_path)
    types = [e["type"] for e in log]
    assert types.count("application.submitted") == 1 and types[0] == "governance.person"
    submitted = next(e for e in log if e["type"] == "application.submitted")
    assert submitted["actor"] == {"role": "applicant", "organisation": LEEDS}
    text = (tmp_path / "log" / store.ENTRIES).read_bytes()
    for handle in ("a.khan", "b.jones", ADMIN + "@", *CHECKERS, "example.org"):
        assert handle.encode() not in text  # people appear by role and organisation only
    with gov.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).where(Event.log_seq.is_(None))) == 0


def test_opt_outs_are_published_only_as_counts_for_a_day_once_it_is_over(
    gov: sa.Engine, tmp_path: Path
) -> None:
    registry = Registry(gov)
    today = datetime.now(UTC)
    for n in range(3):
        registry.set(pseudonym(n), "type1", "online")
    registry.set(pseudonym(9), "ndoo", "proxy")
    registry.withdraw(pseudonym(0), "type1", "online")
    during = publish(tmp_path, gov, today)
    assert during.held == 5
    assert not [e for e in published(tmp_path) if str(e["type"]).startswith("optout")]
    after = publish(tmp_path, gov, today + timedelta(days=1))
    assert after.held == 0
    [daily] = [e for e in published(tmp_path) if e["type"] == "optout.daily"]
    assert daily["details"] == {
        "day": today.date().isoformat(),
        "type1": {"set": 3, "withdrawn": 1},
        "ndoo": {"set": 1, "withdrawn": 0},
        "sources": {"online": 4, "proxy": 1},
    }
    assert daily["time"] == today.date().isoformat()
    text = (tmp_path / "log" / store.ENTRIES).read_bytes()
    for n in (0, 1, 2, 9):
        assert pseudonym(n).encode() not in text


def test_a_crash_after_the_database_commit_and_before_the_append_loses_nothing(
    gov: sa.Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish(tmp_path, gov)
    act(gov, lambda s: record(s, "tre.run", ADMIN, {"run": "RUN-000042"}))

    def crash(self: store.Writer, made: list[dict[str, object]]) -> list[bytes]:
        raise OSError("power cut")

    monkeypatch.setattr(store.Writer, "append", crash)
    with pytest.raises(OSError, match="power cut"):
        publish(tmp_path, gov)
    with Session(gov) as session:  # the database believes it published
        assert session.scalar(sa.select(sa.func.count()).where(Event.log_seq.is_(None))) == 0
    monkeypatch.undo()
    publish(tmp_path, gov)
    runs = [e for e in published(tmp_path) if e["type"] == "tre.run"]
    assert [e["details"] for e in runs] == [{"run": "RUN-000042"}]


def test_a_crash_mid_append_republishes_the_torn_entries_once(
    gov: sa.Engine, tmp_path: Path
) -> None:
    publish(tmp_path, gov)
    size = store.read(tmp_path / "log").size
    for n in range(3):

        def add(s: Session, n: int = n) -> Event:
            return record(s, "tre.run", ADMIN, {"run": f"RUN-00000{n}"})

        act(gov, add)
    publish(tmp_path, gov)
    entries_file = tmp_path / "log" / store.ENTRIES
    data = entries_file.read_bytes()
    last_two = b"".join(entries_file.read_bytes().splitlines(keepends=True)[size + 1 :])
    # as if the append had stopped half-way through its second line, before any checkpoint
    entries_file.write_bytes(data[: len(data) - len(last_two) + 30])
    (tmp_path / "log" / store.CHECKPOINT).write_bytes(
        (tmp_path / "log" / store.CHECKPOINTS / str(size)).read_bytes()
    )
    publish(tmp_path, gov)
    runs = [e["details"]["run"] for e in published(tmp_path) if e["type"] == "tre.run"]
    assert runs == ["RUN-000000", "RUN-000001", "RUN-000002"]


def test_the_service_refuses_to_append_to_a_log_it_cannot_verify(
    gov: sa.Engine, tmp_path: Path
) -> None:
    publish(tmp_path, gov)
    entries_file = tmp_path / "log" / store.ENTRIES
    entries_file.write_bytes(entries_file.read_bytes()[:-40])  # a signed entry cut short
    before = entries_file.read_bytes()
    act(gov, lambda s: record(s, "tre.run", ADMIN, {"run": "RUN-000007"}))
    with pytest.raises(store.LogDamaged, match="truncated"):
        publish(tmp_path, gov)
    assert entries_file.read_bytes() == before
    with gov.connect() as connection:
        waiting = connection.scalar(sa.select(sa.func.count()).where(Event.log_seq.is_(None)))
    assert waiting == 1  # kept, to be published once the log is restored


def test_a_changed_specification_is_published(gov: sa.Engine, tmp_path: Path) -> None:
    from gpdpr import spec

    publish(tmp_path, gov)
    publish(tmp_path, gov)
    [first] = [e for e in published(tmp_path) if e["type"] == "spec.version"]
    assert first["details"]["version"] == spec.shipped().version
    changed = {**spec.released_versions(), "9.9.9": "0" * 64}
    original = spec.released_versions
    try:
        spec.released_versions = lambda: changed
        publish(tmp_path, gov)
    finally:
        spec.released_versions = original
    versions = [e for e in published(tmp_path) if e["type"] == "spec.version"]
    assert len(versions) == 2 and "9.9.9" in versions[1]["details"]["released"]


def test_files_keep_private_permissions_and_checkpoints_are_kept(
    gov: sa.Engine, tmp_path: Path
) -> None:
    publish(tmp_path, gov)
    act(gov, lambda s: record(s, "tre.run", ADMIN, {"run": "RUN-000001"}))
    publish(tmp_path, gov)
    kept = sorted((tmp_path / "log" / store.CHECKPOINTS).iterdir())
    assert len(kept) == 3  # the empty log's, made with it, and one per publish
    assert os.stat(tmp_path / "keys" / "log").st_mode & 0o777 == 0o700


def test_a_practices_whole_type1_list_is_one_count(gov: sa.Engine, tmp_path: Path) -> None:
    yesterday = datetime.now(UTC) - timedelta(days=1)
    listed = [pseudonym(n) for n in range(40_000)]
    Registry(gov).apply_practice_assertions("PKG-1", "Z10001", yesterday, listed, [])
    publish(tmp_path, gov, datetime.now(UTC) + timedelta(days=1))  # counted by when recorded
    [daily] = [e for e in published(tmp_path) if e["type"] == "optout.daily"]
    assert daily["details"]["type1"] == {"set": 40_000, "withdrawn": 0}
    assert daily["details"]["sources"] == {"practice": 40_000}
    with gov.connect() as connection:
        waiting = connection.scalar(sa.select(sa.func.count()).where(Event.log_seq.is_(None)))
    assert waiting == 0
