"""The key custodian's keys: made once, owner-only, never replaced, and checked when read.

The commands are run as a person runs them (real subprocesses, exit code 2 and one line on stderr
when refused); the kit checks are run on the reader the extractor uses.
"""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gpdpr.custodian.keys import CUSTODIAN_FILE, init, issue_practice
from gpdpr.errors import UserError
from gpdpr.practice.kit import (
    COLLECTION_KEY,
    KEY_BYTES,
    PRACTICE_FILE,
    SIGNING_KEY,
    SIGNING_PUB,
    key_id,
    read_collection_key,
    read_kit,
    read_public_key,
)

GPDPR = [sys.executable, "-m", "gpdpr"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GPDPR, *args], capture_output=True, text=True, timeout=120)


def refused(result: subprocess.CompletedProcess[str], message: str) -> None:
    """Exit code 2, one line on stderr, carrying `message`."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """A custodian's key folder with Z10001 issued (made through the library: fast)."""
    folder = tmp_path / "keys"
    init(folder)
    issue_practice(folder, "Z10001")
    return folder


# ---- gpdpr custodian init ----------------------------------------------------------------------


def test_init_makes_a_collection_key_only_its_owner_can_read(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    result = run("custodian", "init", "--keys", str(folder))
    assert result.returncode == 0, result.stderr
    key_file = folder / COLLECTION_KEY
    assert mode(key_file) == 0o600
    assert mode(folder) == 0o700
    collection = read_collection_key(key_file)
    assert len(collection.key) == KEY_BYTES
    about = json.loads((folder / CUSTODIAN_FILE).read_text())
    assert about["collection_key"] == collection.id
    assert collection.id in result.stdout


def test_init_refuses_a_folder_that_already_has_a_collection_key(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    assert run("custodian", "init", "--keys", str(folder)).returncode == 0
    before = snapshot(folder)
    refused(
        run("custodian", "init", "--keys", str(folder)),
        "a new one would change every pseudonym",
    )
    assert snapshot(folder) == before
    assert mode(folder / COLLECTION_KEY) == 0o600


def test_init_refuses_a_folder_that_holds_other_files(tmp_path: Path) -> None:
    data = tmp_path / "practices"
    data.mkdir()
    (data / "patients.parquet").write_bytes(b"records")
    refused(run("custodian", "init", "--keys", str(data)), "a folder of its own")
    assert snapshot(data) == {"patients.parquet": b"records"}


def test_two_inits_make_different_keys_and_an_id_does_not_give_the_key_away(
    tmp_path: Path,
) -> None:
    first, second = init(tmp_path / "a"), init(tmp_path / "b")
    assert first.key != second.key and first.id != second.id
    for collection in (first, second):
        assert len(collection.key) == KEY_BYTES
        assert len(set(collection.key)) > 8  # not a constant or a short pattern
        assert len(collection.id) == 16
        assert collection.id == key_id(collection.key)
        assert collection.id not in (collection.key.hex(), collection.key.hex()[:16])
        assert collection.id.encode() not in collection.key
    # The custodian's public description holds the id, never the key in any form.
    about = (tmp_path / "a" / CUSTODIAN_FILE).read_text()
    assert first.id in about
    assert first.key.hex() not in about
    assert base64.b64encode(first.key).decode() not in about


# ---- gpdpr custodian issue-practice ------------------------------------------------------------


def test_issue_practice_makes_a_kit_the_extractor_accepts(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    assert run("custodian", "init", "--keys", str(folder)).returncode == 0
    result = run("custodian", "issue-practice", "z10001", "--keys", str(folder))
    assert result.returncode == 0, result.stderr
    kit_folder = folder / "practices" / "Z10001"
    kit = read_kit(kit_folder)
    assert kit.ods_code == "Z10001"
    assert kit.collection == read_collection_key(folder / COLLECTION_KEY)
    public = read_public_key(kit_folder / SIGNING_PUB)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert kit.signing.public_key().public_bytes(*raw) == public.public_bytes(*raw)
    about = json.loads((kit_folder / PRACTICE_FILE).read_text())
    assert about["signing_key"] == kit.signing_key_id
    assert mode(kit_folder) == 0o700
    assert mode(kit_folder / COLLECTION_KEY) == 0o600
    assert mode(kit_folder / SIGNING_KEY) == 0o600


def test_a_second_practice_gets_its_own_signing_key_and_the_same_collection_key(
    keys: Path,
) -> None:
    other = read_kit(issue_practice(keys, "Z10002"))
    first = read_kit(keys / "practices" / "Z10001")
    assert other.ods_code == "Z10002"
    assert other.collection == first.collection
    assert other.signing_key_id != first.signing_key_id


def test_issue_practice_refuses_a_second_issue_for_the_same_practice(keys: Path) -> None:
    before = snapshot(keys)
    refused(
        run("custodian", "issue-practice", "Z10001", "--keys", str(keys)),
        "Z10001 has been issued keys",
    )
    assert snapshot(keys) == before


@pytest.mark.parametrize("ods", ["12", "Z1 0001", "Z1", "Z10001/../X", ""])
def test_issue_practice_refuses_a_malformed_ods_code(keys: Path, ods: str) -> None:
    before = snapshot(keys)
    refused(run("custodian", "issue-practice", ods, "--keys", str(keys)), "is not an ODS code")
    assert snapshot(keys) == before
    assert sorted(p.name for p in (keys / "practices").iterdir()) == ["Z10001"]


def test_issue_practice_without_a_collection_key_points_at_init(tmp_path: Path) -> None:
    empty = tmp_path / "keys"
    empty.mkdir()
    refused(
        run("custodian", "issue-practice", "Z10001", "--keys", str(empty)),
        "gpdpr custodian init",
    )
    assert list(empty.iterdir()) == []


# ---- read_kit: a damaged or mixed-up kit is refused --------------------------------------------


def rewrite(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def kit_of(keys: Path) -> Path:
    return keys / "practices" / "Z10001"


def refuses(kit: Path, file: Path, message: str) -> None:
    with pytest.raises(UserError) as caught:
        read_kit(kit)
    text = str(caught.value)
    assert str(file) in text and message in text, text


def test_read_kit_refuses_a_collection_key_whose_base64_was_edited(keys: Path) -> None:
    kit = kit_of(keys)
    key_file = kit / COLLECTION_KEY
    document = json.loads(key_file.read_text())
    encoded = document["key"]
    document["key"] = ("B" if encoded[0] == "A" else "A") + encoded[1:]  # still valid base64
    rewrite(key_file, json.dumps(document).encode())
    refuses(kit, key_file, "the key does not match its id")


def test_read_kit_refuses_a_collection_key_that_is_not_base64(keys: Path) -> None:
    kit = kit_of(keys)
    key_file = kit / COLLECTION_KEY
    document = json.loads(key_file.read_text())
    document["key"] = "not*base64!"
    rewrite(key_file, json.dumps(document).encode())
    refuses(kit, key_file, "is not a gpdpr collection key file")


def test_read_kit_refuses_a_collection_key_whose_id_does_not_match(keys: Path) -> None:
    kit = kit_of(keys)
    key_file = kit / COLLECTION_KEY
    document = json.loads(key_file.read_text())
    document["id"] = "0" * 16
    rewrite(key_file, json.dumps(document).encode())
    refuses(kit, key_file, "the key does not match its id")


def test_read_kit_refuses_another_schemes_collection_key(keys: Path, tmp_path: Path) -> None:
    other = tmp_path / "other-scheme"
    init(other)
    kit = kit_of(keys)
    rewrite(kit / COLLECTION_KEY, (other / COLLECTION_KEY).read_bytes())
    read_collection_key(kit / COLLECTION_KEY)  # a sound key in itself ...
    # ... but not the one the kit was issued with.
    refuses(kit, kit / COLLECTION_KEY, "is not the collection key this kit was issued with")


def test_read_kit_refuses_a_signing_key_swapped_for_another(keys: Path) -> None:
    kit = kit_of(keys)
    other = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    rewrite(kit / SIGNING_KEY, other)
    # Packages signed with it could never be verified against the custodian's signing.pub.
    refuses(kit, kit / SIGNING_KEY, "is not the signing key this kit was issued with")


def test_read_kit_refuses_a_signing_key_that_is_not_pem(keys: Path) -> None:
    kit = kit_of(keys)
    rewrite(kit / SIGNING_KEY, b"this is not a key\n")
    refuses(kit, kit / SIGNING_KEY, "is not a PEM private key")


def test_read_kit_refuses_a_signing_key_of_the_wrong_kind(keys: Path) -> None:
    kit = kit_of(keys)
    wrong = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    rewrite(kit / SIGNING_KEY, wrong)
    refuses(kit, kit / SIGNING_KEY, "is not an Ed25519 key")


def test_read_kit_refuses_a_damaged_description_or_a_missing_kit(
    keys: Path, tmp_path: Path
) -> None:
    kit = kit_of(keys)
    rewrite(kit / PRACTICE_FILE, b"{not json")
    refuses(kit, kit / PRACTICE_FILE, "is damaged")
    with pytest.raises(UserError, match="gpdpr custodian issue-practice"):
        read_kit(tmp_path / "no-such-kit")
