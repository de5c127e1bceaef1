"""The witness over HTTP (c2sp.org/tlog-witness), as a log operator and an attacker would meet
it: a real `gpdpr log witness serve` co-signs a growing log the log enrolled by URL, refuses a
rolled-back or forked log with the protocol's status codes, and a cosignature that does not
verify with the key the log enrolled is never published."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from gpdpr import cli
from gpdpr.errors import UserError
from gpdpr.portal.serve import free_port
from gpdpr.transparency import checkpoint as cp
from gpdpr.transparency import cosigning, note, store, witness
from gpdpr.transparency.witness_http import check_url

runner = CliRunner()
GPDPR = [sys.executable, "-m", "gpdpr"]


def entries(n: int, start: int = 0, kind: str = "RUN") -> list[dict[str, object]]:
    return [
        {"type": "tre.run", "details": {"run": f"{kind}-{i:06d}"}} for i in range(start, start + n)
    ]


def grow(writer: store.Writer, keys: Path, n: int, kind: str = "RUN") -> cosigning.Gathered:
    writer.append(entries(n, writer.size, kind))
    gathered = cosigning.gather(writer, keys, writer.sign(), int(time.time()))
    writer.publish(gathered.checkpoint)
    return gathered


def serve(state: Path) -> Iterator[str]:
    """A `gpdpr log witness serve` subprocess, once it answers; ended after."""
    port = free_port()
    proc = subprocess.Popen(
        [*GPDPR, "log", "witness", "serve", "--state", str(state), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the witness never answered"
            try:
                if httpx.get(url + "/", timeout=10).status_code == 404:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url
    finally:
        proc.kill()
        proc.wait(timeout=60)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[store.Writer, Path, witness.Witness, str]]:
    keys = tmp_path / "home" / "keys"
    writer = store.open_verified(tmp_path / "home" / "log", keys)
    made = witness.create(tmp_path / "w", "w.example/http", [cp.log_verifier(writer.key).vkey])
    for url in serve(tmp_path / "w"):
        yield writer, keys, made, url


def enrol(keys: Path, url: str, vkey: str) -> str:
    done = runner.invoke(
        cli.app,
        ["log", "witness", "enrol", "--url", url, "--vkey", vkey, "--home", str(keys.parent)],
    )
    assert done.exit_code == 0 and "quorum 1" in done.output, done.output
    return done.output


def test_a_witness_over_http_co_signs_the_log_and_refuses_a_rollback_and_a_fork(
    served: tuple[store.Writer, Path, witness.Witness, str], tmp_path: Path
) -> None:
    writer, keys, made, url = served
    policy_file = tmp_path / "pinned-policy"
    policy_file.write_text(enrol(keys, url + "/", made.verifier.vkey))
    folder = writer.contents.folder
    verify = ["log", "verify", "--log-dir", str(folder), "--policy", str(policy_file)]
    kept: dict[str, bytes] = {}
    for n in (3, 2):  # from the empty tree, then with a consistency proof
        assert grow(writer, keys, n).notes == []
        kept = kept or {f: (folder / f).read_bytes() for f in (store.ENTRIES, store.CHECKPOINT)}
        ok = runner.invoke(cli.app, verify)
        assert ok.exit_code == 0 and "co-signed by 1 of 1" in ok.output, ok.output
    assert witness.kept_size(made, cp.ORIGIN) == 5
    # rolled back to 3 and signed again with the real key: the witness co-signed 5
    rolled = tmp_path / "rolled"
    shutil.copytree(folder, rolled)
    for name, data in kept.items():
        (rolled / name).write_bytes(data)
    back = store.open_verified(rolled, keys)
    assert back.size == 3
    refused = cosigning.gather(back, keys, back.sign(), int(time.time()))
    assert len(refused.notes) == 2 and "answered 400" in refused.notes[0], refused.notes
    back.publish(refused.checkpoint)
    again = runner.invoke(
        cli.app, ["log", "verify", "--log-dir", str(rolled), "--policy", str(policy_file)]
    )
    assert again.exit_code == 2 and "0 of the pinned witnesses" in again.output, again.output
    # a fork: 7 other entries under the real key; the proof from 5 cannot hold
    forked = store.open_verified(tmp_path / "fork", keys)
    forked.append(entries(7, 0, "FORK"))
    gathered = cosigning.gather(forked, keys, forked.sign(), int(time.time()))
    assert "answered 422" in gathered.notes[0] and "forked" in gathered.notes[0], gathered.notes
    assert not gathered.checkpoint.signed.by(made.verifier)
    # the protocol's answers, byte for byte as a client of the protocol sees them
    current = (folder / store.CHECKPOINT).read_bytes()
    stale = httpx.post(url + "/add-checkpoint", content=witness.request_body(0, [], current))
    assert stale.status_code == 409 and stale.content == b"5\n"
    assert stale.headers["content-type"] == "text/x.tlog.size"
    other = cp.sign(Ed25519PrivateKey.generate(), 0, bytes(32), "other.example/log").to_bytes()
    unknown = httpx.post(url + "/add-checkpoint", content=witness.request_body(0, [], other))
    assert unknown.status_code == 404
    impostor = cp.sign(Ed25519PrivateKey.generate(), 5, bytes(32)).to_bytes()
    unsigned = httpx.post(url + "/add-checkpoint", content=witness.request_body(5, [], impostor))
    assert unsigned.status_code == 403
    for body in (b"", b"garbage", b"old x\n\n" + current, b"old 0\nnot base64!\n\n" + current):
        assert httpx.post(url + "/add-checkpoint", content=body).status_code == 400, body
    huge = httpx.post(url + "/add-checkpoint", content=b"old 0\n" + b"A" * 100_000)
    assert huge.status_code == 413
    assert witness.kept_size(made, cp.ORIGIN) == 5  # none of it moved the witness


def test_a_cosignature_that_does_not_verify_with_the_enrolled_key_is_not_counted(
    served: tuple[store.Writer, Path, witness.Witness, str], tmp_path: Path
) -> None:
    writer, keys, made, url = served
    # enrolled with another key of the same name: the server's cosignatures are not its
    stranger = Ed25519PrivateKey.generate().public_key()
    enrol(keys, url, note.verifier_for(made.name, stranger, note.COSIGNATURE).vkey)
    gathered = grow(writer, keys, 2)
    assert len(gathered.notes) == 2 and "no cosignature that verifies" in gathered.notes[0]
    assert [s.name for s in gathered.checkpoint.signed.signatures] == [cp.ORIGIN]
    # and a real cosignature altered in transit is refused the same way
    signed = writer.sign()
    line = note.cosign(signed.text, made.name, made.key, int(time.time())).line().encode()
    flipped = line[:-5] + (b"A" if line[-5:-4] != b"A" else b"B") + line[-4:]
    assert cosigning.cosignature(signed, line, made.verifier).name == made.name
    with pytest.raises(UserError, match="no cosignature that verifies"):
        cosigning.cosignature(signed, flipped, made.verifier)


def test_a_witness_that_cannot_be_reached_does_not_stop_the_publish(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    writer = store.open_verified(tmp_path / "log", keys)
    vkey = note.verifier_for("w.example/gone", Ed25519PrivateKey.generate().public_key(), 4).vkey
    cosigning.enrol_url(keys, f"http://127.0.0.1:{free_port()}", vkey, 1)
    gathered = grow(writer, keys, 1)
    assert "did not co-sign" in gathered.notes[0] and writer.size == 1


@pytest.mark.parametrize(
    "url",
    [
        "ftp://w.example",
        "file:///etc/passwd",
        "https://user:secret@w.example",
        "https://@w.example",
        "https://",
        "https://w.example/?x=1",
        "https://w.example/#top",
        "https://w.example:99999",
        "https://w.example/a b",
        "https://w.example/\n",
        "w.example",
        "javascript:alert(1)",
    ],
)
def test_a_witness_url_is_refused_unless_plainly_http_or_https_to_a_host(url: str) -> None:
    with pytest.raises(UserError, match="witness URL"):
        check_url(url)


def test_a_good_witness_url_is_kept_as_its_base() -> None:
    assert check_url("https://w.example/witness/") == "https://w.example/witness"
    assert check_url("http://127.0.0.1:8080") == "http://127.0.0.1:8080"
