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

from gpdpr.custodian.keys import (
    CUSTODIAN_FILE,
    PROJECT_KEY,
    PSEUDONYM_KEY,
    SERVICE_KEY,
    SERVICE_PUB,
    init,
    issue_practice,
    pseudonym_key_id,
    read_pseudonym_key,
)
from gpdpr.errors import UserError
from gpdpr.practice.kit import (
    CUSTODIAN_PUB,
    KEY_BYTES,
    OLD_COLLECTION_KEY,
    PRACTICE_FILE,
    SIGNING_KEY,
    SIGNING_PUB,
    public_key_id,
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


def test_init_makes_keys_only_their_owner_can_read(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    result = run("custodian", "init", "--keys", str(folder))
    assert result.returncode == 0, result.stderr
    assert mode(folder) == 0o700
    for secret in (PSEUDONYM_KEY, PROJECT_KEY, SERVICE_KEY):
        assert mode(folder / secret) == 0o600, secret
    pseudonym = read_pseudonym_key(folder)
    assert len(pseudonym.key) == KEY_BYTES
    about = json.loads((folder / CUSTODIAN_FILE).read_text())
    assert about["pseudonym_key"] == pseudonym.id
    assert about["service_key"] == public_key_id(read_public_key(folder / SERVICE_PUB))
    assert pseudonym.id in result.stdout


def test_init_refuses_a_folder_that_already_has_a_pseudonym_key(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    assert run("custodian", "init", "--keys", str(folder)).returncode == 0
    before = snapshot(folder)
    refused(
        run("custodian", "init", "--keys", str(folder)),
        "a new one would change every pseudonym",
    )
    assert snapshot(folder) == before
    assert mode(folder / PSEUDONYM_KEY) == 0o600


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
    for made in (first, second):
        assert len(made.key) == KEY_BYTES
        assert len(set(made.key)) > 8  # not a constant or a short pattern
        assert len(made.id) == 16
        assert made.id == pseudonym_key_id(made.key)
        assert made.id not in (made.key.hex(), made.key.hex()[:16])
        assert made.id.encode() not in made.key
    # The custodian's public description holds the id, never the key in any form.
    about = (tmp_path / "a" / CUSTODIAN_FILE).read_text()
    assert first.id in about
    assert first.key.hex() not in about
    assert base64.b64encode(first.key).decode() not in about
    # The project key is a secret of its own, not derived from the pseudonym key.
    projects = json.loads((tmp_path / "a" / PROJECT_KEY).read_text())["key"]
    assert base64.b64decode(projects) not in (first.key, second.key)


# ---- gpdpr custodian issue-practice ------------------------------------------------------------


def test_issue_practice_makes_a_kit_the_extractor_accepts(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    assert run("custodian", "init", "--keys", str(folder)).returncode == 0
    url = "http://custodian.example:8471"
    result = run("custodian", "issue-practice", "z10001", "--keys", str(folder), "--url", url)
    assert result.returncode == 0, result.stderr
    kit_folder = folder / "practices" / "Z10001"
    kit = read_kit(kit_folder)
    assert kit.ods_code == "Z10001" and kit.custodian_url == url
    assert kit.pseudonym_key_id == read_pseudonym_key(folder).id
    public = read_public_key(kit_folder / SIGNING_PUB)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert kit.signing.public_key().public_bytes(*raw) == public.public_bytes(*raw)
    service = read_public_key(folder / SERVICE_PUB)
    assert kit.custodian.public_bytes(*raw) == service.public_bytes(*raw)
    about = json.loads((kit_folder / PRACTICE_FILE).read_text())
    assert about["signing_key"] == kit.signing_key_id
    assert mode(kit_folder) == 0o700
    assert mode(kit_folder / SIGNING_KEY) == 0o600
    # The kit holds the practice's own key and the custodian's public key, nothing else.
    assert sorted(p.name for p in kit_folder.iterdir()) == sorted(
        [PRACTICE_FILE, SIGNING_KEY, SIGNING_PUB, CUSTODIAN_PUB]
    )
    secret = read_pseudonym_key(folder).key
    for path in kit_folder.iterdir():
        data = path.read_bytes()
        assert secret not in data and base64.b64encode(secret) not in data


def test_a_second_practice_gets_its_own_signing_key(keys: Path) -> None:
    other = read_kit(issue_practice(keys, "Z10002"))
    first = read_kit(keys / "practices" / "Z10001")
    assert other.ods_code == "Z10002"
    assert other.signing_key_id != first.signing_key_id
    assert other.pseudonym_key_id == first.pseudonym_key_id


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


def test_issue_practice_without_a_pseudonym_key_points_at_init(tmp_path: Path) -> None:
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


def test_read_kit_refuses_an_old_kit_holding_the_collection_key(keys: Path) -> None:
    kit = kit_of(keys)
    rewrite(kit / OLD_COLLECTION_KEY, b'{"kind": "gpdpr collection key"}')
    refuses(kit, kit, "Destroy it (every copy)")


def test_read_kit_refuses_a_custodian_key_swapped_for_another(keys: Path) -> None:
    kit = kit_of(keys)
    other = Ed25519PrivateKey.generate().public_key()
    rewrite(
        kit / CUSTODIAN_PUB,
        other.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )
    refuses(kit, kit / CUSTODIAN_PUB, "is not the custodian key this kit was issued with")


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
