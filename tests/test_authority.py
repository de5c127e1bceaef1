"""Authority at collection, attacked: a package dated in the future, a package signed with a
lost practice key after its revocation, and an edited practice register are each refused, and
nothing of them reaches the lake."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from collecting import central, resign, state
from conftest import Made, one_practice
from extracting import Keys, run
from gpdpr.collect.service import collect
from gpdpr.custodian.keys import issue_practice, revoke_practice
from gpdpr.custodian.register import REGISTER, read_register


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return one_practice(tmp_path_factory.mktemp("small"), patients=150, seed=9)


@pytest.fixture
def world(small: Made, tmp_path: Path) -> tuple[Keys, Path, Path]:
    """A fresh custodian, the practice's package made with its kit, and the practice."""
    keys = Keys(tmp_path / "keys")
    practice = sorted(p for p in small.root.iterdir() if p.is_dir())[0]
    run(practice, tmp_path / "package", keys)
    return keys, tmp_path / "package", practice


def _refused(keys: Keys, tmp_path: Path, package: Path, reason: str) -> None:
    home = central(tmp_path, keys)
    result = collect(home, [package])
    assert result.version is None and not result.loaded
    [refused] = result.refused
    assert reason in refused.reason, refused.reason
    _, tables = state(home)
    assert all(rows == 0 for rows, _ in tables.values()), "something of it reached the lake"


@pytest.mark.parametrize("field", ["created_at", "window/until"])
def test_a_package_dated_in_the_future_is_refused(
    world: tuple[Keys, Path, Path], tmp_path: Path, field: str
) -> None:
    keys, package, practice = world
    # Properly signed by the practice itself: only the date is wrong.
    resign(package, keys.kit(practice.name) / "signing.key", {field: "2099-01-01T00:00:00Z"})
    _refused(keys, tmp_path, package, "in the future")


def test_a_lost_kit_signs_nothing_after_its_revocation_and_a_new_kit_does(
    world: tuple[Keys, Path, Path], tmp_path: Path
) -> None:
    keys, package, practice = world
    stolen = tmp_path / "stolen-kit"
    shutil.copytree(keys.kit(practice.name), stolen)
    assert revoke_practice(keys.folder, practice.name) == 1
    issue_practice(keys.folder, practice.name, keys.url)
    # The thief re-signs the practice's package (or any package) with the lost key: the
    # collector verifies it against the practice's key now, which is no longer that one.
    resign(package, stolen / "signing.key")
    _refused(keys, tmp_path, package, "does not verify with the practice's key")

    # The practice's new kit is trusted: its next package loads.
    fresh = tmp_path / "fresh"
    run(practice, fresh, keys)
    result = collect(central(tmp_path, keys), [fresh])
    assert not result.refused and result.version is not None


def test_the_old_key_is_refused_even_where_the_kit_was_not_replaced(
    world: tuple[Keys, Path, Path], tmp_path: Path
) -> None:
    keys, package, practice = world
    revoke_practice(keys.folder, practice.name)
    # The revoked public key put back where the collector looks (as a careless restore would):
    # the register still refuses it.
    revoked = sorted((keys.folder / "practices").glob(f".{practice.name}.revoked-*"))[0]
    (keys.folder / "practices" / practice.name).mkdir()
    shutil.copy(revoked / "signing.pub", keys.folder / "practices" / practice.name)
    _refused(keys, tmp_path, package, "was revoked")


def test_an_edited_register_is_refused_whole(
    world: tuple[Keys, Path, Path], tmp_path: Path
) -> None:
    keys, package, practice = world
    # An insider adds their own key for the practice to the register, without the custodian's
    # signing key.
    intruder = Ed25519PrivateKey.generate().public_key()
    raw = intruder.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    document = orjson.loads((keys.folder / REGISTER).read_bytes())
    document["practices"].append(
        {
            "ods_code": practice.name,
            "key_id": "0" * 16,
            "public_key": base64.b64encode(raw).decode(),
            "issued": "2020-01-01T00:00:00Z",
            "rotated": None,
            "revoked": None,
        }
    )
    (keys.folder / REGISTER).write_bytes(orjson.dumps(document))
    _refused(keys, tmp_path, package, "not as the custodian signed it")


def test_the_register_records_issue_rotation_and_revocation(
    world: tuple[Keys, Path, Path],
) -> None:
    keys, _, practice = world
    revoke_practice(keys.folder, practice.name)
    issue_practice(keys.folder, practice.name, keys.url)
    first, second = [e for e in read_register(keys.folder) if e.ods_code == practice.name]
    assert first.revoked is not None and first.rotated is not None and second.revoked is None
    assert first.key_id != second.key_id
