"""The custodian's pseudonym service, run for real (an HTTP server on a free port), attacked as a
rogue practice, a thief with a stolen kit and an impostor custodian would."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import rbcl
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conftest import Made, one_practice
from extracting import Keys, run, tables
from gpdpr.custodian.keys import init, issue_practice
from gpdpr.custodian.service import Counts, counts_folder, running
from gpdpr.errors import UserError
from gpdpr.practice import custodian_client, oprf
from gpdpr.practice.custodian_client import EVALUATE_PATH, request_message
from gpdpr.practice.kit import PracticeKit, read_kit
from gpdpr.practice.pseudonyms import nhs_input


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Made:
    return one_practice(tmp_path_factory.mktemp("small"), patients=300, seed=5)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    keys = tmp_path_factory.mktemp("custodian") / "keys"
    init(keys)
    with running(keys, daily_limit=300) as url:
        yield keys, url


def _signed(
    key: Ed25519PrivateKey,
    practice: str,
    body: bytes,
    *,
    when: datetime | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    stamp = (when or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    nonce = nonce or secrets.token_hex(16)
    signature = key.sign(request_message(practice, stamp, nonce, EVALUATE_PATH, body))
    return {
        "Gpdpr-Practice": practice,
        "Gpdpr-Time": stamp,
        "Gpdpr-Nonce": nonce,
        "Gpdpr-Signature": base64.b64encode(signature).decode(),
    }


def _body(count: int) -> bytes:
    return b"".join(oprf.blind([b"x%d" % i for i in range(count)], oprf.new_blinds(count)))


def _count(keys: Path, practice: str) -> int:
    return sum(c.evaluations for c in Counts(counts_folder(keys)).daily() if c.practice == practice)


def test_only_the_practice_itself_is_answered(service: tuple[Path, str]) -> None:
    keys, url = service
    kit = read_kit(issue_practice(keys, "Z20001", url))
    issue_practice(keys, "Z20002", url)
    post = url + EVALUATE_PATH
    body = _body(3)
    good = httpx.post(post, content=body, headers=_signed(kit.signing, "Z20001", body))
    assert good.status_code == 200 and len(good.content) == len(body)

    # Z20001's key speaking for Z20002, a stranger's key, an unknown practice: all refused.
    as_other = httpx.post(post, content=body, headers=_signed(kit.signing, "Z20002", body))
    stranger = Ed25519PrivateKey.generate()
    forged = httpx.post(post, content=body, headers=_signed(stranger, "Z20001", body))
    unknown = httpx.post(post, content=body, headers=_signed(stranger, "Z29999", body))
    assert (as_other.status_code, forged.status_code, unknown.status_code) == (401, 401, 403)

    # A signed request whose body was swapped, replayed, or sent from a stale clock.
    headers = _signed(kit.signing, "Z20001", body)
    swapped = httpx.post(post, content=_body(3), headers=headers)
    assert swapped.status_code == 401
    nonce = secrets.token_hex(16)
    first = httpx.post(
        post, content=body, headers=_signed(kit.signing, "Z20001", body, nonce=nonce)
    )
    again = httpx.post(
        post, content=body, headers=_signed(kit.signing, "Z20001", body, nonce=nonce)
    )
    assert (first.status_code, again.status_code) == (200, 401)
    stale = datetime.now(UTC) - timedelta(hours=1)
    old = httpx.post(post, content=body, headers=_signed(kit.signing, "Z20001", body, when=stale))
    assert old.status_code == 401 and "clock" in old.text

    # Only what was answered is counted: three evaluations in each of two accepted requests.
    assert _count(keys, "Z20001") == 6 and _count(keys, "Z20002") == 0


def test_crafted_points_are_refused_and_not_counted(service: tuple[Path, str]) -> None:
    keys, url = service
    kit = read_kit(issue_practice(keys, "Z20003", url))
    for body in (bytes(32), b"\xff" * 32, _body(1) + b"\0"):
        refused = httpx.post(
            url + EVALUATE_PATH, content=body, headers=_signed(kit.signing, "Z20003", body)
        )
        assert refused.status_code == 400, body
    assert _count(keys, "Z20003") <= 2  # counted before evaluation, never more than asked


def test_the_daily_allowance_stops_a_stolen_kit_trawling_and_counts_are_public(
    service: tuple[Path, str],
) -> None:
    keys, url = service
    kit = read_kit(issue_practice(keys, "Z20004", url))
    numbers = [f"{n:010d}".encode() for n in range(350)]
    with pytest.raises(UserError, match=r"HTTP 429.*exceed its 300 evaluations"):
        custodian_client.evaluate(kit, numbers)
    assert _count(keys, "Z20004") == 0  # a refused request evaluates and counts nothing
    assert len(custodian_client.evaluate(kit, numbers[:200])) == 200
    with pytest.raises(UserError, match="HTTP 429"):
        custodian_client.evaluate(kit, numbers[:120])
    published = httpx.get(url + "/v1/counts").json()
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert {
        "kind": "custodian.evaluations",
        "day": today,
        "practice": "Z20004",
        "evaluations": 200,
    } in published


def test_an_impostor_custodian_is_not_believed(service: tuple[Path, str], tmp_path: Path) -> None:
    keys, url = service
    kit = read_kit(issue_practice(keys, "Z20005", url))
    impostor = tmp_path / "impostor"
    init(impostor)
    (impostor / "practices" / "Z20005").mkdir()
    (impostor / "practices" / "Z20005" / "signing.pub").write_bytes(
        kit.signing.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with running(impostor) as fake, pytest.raises(UserError, match="not signed by the custodian"):
        custodian_client.evaluate(kit, [b"anything"], url=fake)


def test_an_extract_is_one_round_trip_and_its_count_is_what_was_evaluated(
    small: Made, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = Keys(tmp_path / "keys")
    calls: list[int] = []
    real = custodian_client.evaluate

    def counted(kit: PracticeKit, inputs: Sequence[bytes], url: str | None = None) -> list[bytes]:
        calls.append(len(inputs))
        return real(kit, inputs, url)

    monkeypatch.setattr(custodian_client, "evaluate", counted)
    practice = sorted(p for p in small.root.iterdir() if p.is_dir())[0]
    manifest = run(practice, tmp_path / "package", keys)
    evaluations = manifest["pseudonymisation"]["evaluations"]
    assert calls == [evaluations]
    assert _count(keys.folder, practice.name) == evaluations


# ---- a stolen kit and the lake -----------------------------------------------------------------


def _materials(kit: Path) -> list[bytes]:
    """Every byte string a thief could try as a key: each file whole, each base64 or PEM body
    decoded, each JSON value, and the raw private and public signing keys."""
    found: list[bytes] = []
    for path in kit.iterdir():
        data = path.read_bytes()
        found.append(data)
        for line in data.splitlines():
            found.append(line.strip())
            with contextlib.suppress(ValueError):
                found.append(base64.b64decode(line.strip(), validate=True))
        for piece in data.replace(b'"', b" ").replace(b",", b" ").split():
            found.append(piece)
            with contextlib.suppress(ValueError):
                found.append(bytes.fromhex(piece.decode()))
    signing = read_kit(kit).signing
    found.append(
        signing.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
    )
    return [m for m in dict.fromkeys(found) if m]


def _guesses(material: bytes, nhs: str) -> Iterator[str]:
    """What a thief would compute from one key candidate and one NHS number: the old scheme's
    HMACs (with and without its HKDF step), plain hashes, and the OPRF itself with the
    material taken as its key."""
    for text in (f"nhs:{nhs}".encode(), nhs_input(nhs), nhs.encode()):
        yield hmac.digest(material, text, "sha256").hex()
        for info in (b"gpdpr pseudonym v1: patient", b"gpdpr pseudonym v2: patient"):
            subkey = HKDF(hashes.SHA256(), 32, None, info).derive(material)
            yield hmac.digest(subkey, text, "sha256").hex()
        yield hashlib.sha256(material + text).hexdigest()
    # The OPRF with the material as its key (hashed to a scalar, and as it is when it is the
    # size of one), on the input the practice sends.
    yield oprf.evaluate(_scalar_of(material), nhs_input(nhs))[:32].hex()
    if len(material) == 32 and material != bytes(32):
        yield oprf.evaluate(material, nhs_input(nhs))[:32].hex()


def _scalar_of(material: bytes) -> bytes:
    scalar: bytes = rbcl.crypto_core_ristretto255_scalar_reduce(hashlib.sha512(material).digest())
    return scalar


def test_a_stolen_kit_and_the_lake_re_identify_no_one(small: Made, tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    practice = sorted(p for p in small.root.iterdir() if p.is_dir())[0]
    run(practice, tmp_path / "package", keys)
    lake = set(tables(tmp_path / "package")["patients"]["patient"].to_pylist())
    # A sample of the practice's own patients keeps the test quick; the thief's odds per
    # person do not depend on how many are tried.
    numbers = pq.read_table(practice / "patients.parquet")["nhs_number"].to_pylist()[:60]
    assert len(lake) > 200

    kit = keys.kit(practice.name)
    materials = _materials(kit)
    assert len(materials) > 10
    recovered = {
        guess for m in materials for nhs in numbers for guess in _guesses(m, nhs) if guess in lake
    }
    assert recovered == set()

    # The same attack with the custodian's key recovers everyone: it is an attack that works
    # when the key is there, so finding nothing above means the kit holds no key.
    key = (keys.folder / "pseudonym.key").read_bytes()
    control = {g for nhs in numbers for g in _guesses(_json_key(key), nhs) if g in lake}
    assert len(control) >= 50  # all 60 but those with a Type 1 opt-out


def _json_key(document: bytes) -> bytes:
    import orjson

    return base64.b64decode(orjson.loads(document)["key"])


def test_gpdpr_custodian_serve_runs_the_service(tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    from gpdpr.portal.serve import free_port

    GPDPR = [sys.executable, "-m", "gpdpr"]
    home = tmp_path / "home"
    assert (
        subprocess.run(
            [sys.executable, "-m", "gpdpr", "init", "--home", str(home)], capture_output=True
        ).returncode
        == 0
    )
    port = free_port()
    kit = read_kit(issue_practice(home / "keys", "Z20009", f"http://127.0.0.1:{port}"))
    server = subprocess.Popen(
        [*GPDPR, "custodian", "serve", "--home", str(home), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                outputs = custodian_client.evaluate(kit, [nhs_input("9434765919")])
                break
            except UserError:
                assert server.poll() is None and time.monotonic() < deadline, "it never answered"
                time.sleep(0.5)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert outputs[0][:32].hex() == _lake_pseudonym(home, "9434765919")
    assert _count(home / "keys", "Z20009") == 1


def _lake_pseudonym(home: Path, number: str) -> str:
    from gpdpr.custodian.central import lake_pseudonym
    from gpdpr.custodian.keys import read_pseudonym_key

    return lake_pseudonym(read_pseudonym_key(home / "keys"), number)
