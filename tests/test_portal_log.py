"""The transparency log's pages in the portal, over HTTP on a real service home on each database:
the activity log (verified, with its checkpoint, paged and filtered), one entry with its proof,
"verify it yourself", the public files behind a strict allow-list, the real verifier and the
`gpdpr log` command checking the log over HTTP against the running server, a damaged log shown
as damaged (never a 500, never a reassuring page), and no personal data on any of it."""

from __future__ import annotations

import http.client
import re
import shutil
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from databases import BACKENDS
from governing import CHECKERS, COLLEAGUE, LEAD, PANEL
from gpdpr.db.events import record
from gpdpr.portal.app import create_app
from gpdpr.portal.log import KEY_ENTRIES, PER_PAGE, TITLES, meaning_of, state_of
from gpdpr.portal.security import RateLimit
from gpdpr.portal.serve import publish_now, running
from gpdpr.transparency import cosigning, store
from gpdpr.transparency.demo import demo_witness
from gpdpr.transparency.publish import AGGREGATES, KINDS, log_folder
from gpdpr.transparency.verify import Source, prove, verify
from portal_home import FAST, Home, build, database

GPDPR = [sys.executable, "-m", "gpdpr"]
# Enough agreements reaching their end for several pages of entries.
EXPIRED = 2 * PER_PAGE + 7


@dataclass
class Site:
    built: Home
    app: FastAPI
    opted_out: list[str]  # NHS numbers
    pseudonyms: list[str]  # theirs, in the lake


@pytest.fixture(scope="module", params=BACKENDS)
def site(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A home whose log holds its collection, governance, many agreements ending, and an erasure
    cycle after three patients opted out; published, as the portal publishes."""
    from gpdpr.collect.service import Central, erase_cycle

    with database(request.param):
        built = build(tmp_path_factory.mktemp(f"log-{request.param}"), patients=10)
        app = create_app(built.home, passwords=FAST, rate_limit=RateLimit())
        portal = app.state.portal
        opted_out = built.nhs_numbers[:3]
        pseudonyms = [portal.custodian.pseudonym_for(n, "patient", "test") for n in opted_out]
        for pseudonym in pseudonyms:
            portal.registry.set(pseudonym, "type1", "online")
        with Session(built.engine) as session, session.begin():
            for n in range(EXPIRED):
                record(
                    session,
                    "agreement.expired",
                    "gpdpr",
                    {"agreement": f"DSA-2020-{n:04d}", "ended_on": "2026-01-01"},
                )
        erase_cycle(Central(built.home))
        demo_witness(built.home)  # the service's checkpoints are co-signed by a witness
        publish_now(app)
        yield Site(built, app, opted_out, pseudonyms)
        portal.close()
        built.engine.dispose()


def visitor(site: Site) -> TestClient:
    return TestClient(site.app, follow_redirects=False)


def folder(site: Site) -> Path:
    return log_folder(site.built.home)


def texts(html: str) -> str:
    """A page's text, tags dropped and entities decoded (enough for assertions)."""
    plain = re.sub(r"<[^>]+>", " ", html)
    plain = plain.replace("&#39;", "'").replace("&amp;", "&").replace("&quot;", '"')
    return re.sub(r"\s+", " ", plain)


def seqs_on(html: str) -> list[int]:
    return [int(n) for n in re.findall(r'href="/log/entries/(\d+)"', html)]


# ---- the pages ---------------------------------------------------------------------------------


def test_the_activity_log_says_it_verified_and_shows_the_checkpoint(site: Site) -> None:
    contents = store.read(folder(site))
    assert contents.checkpoint is not None
    page = visitor(site).get("/log")
    assert page.status_code == 200
    text = texts(page.text)
    assert "The log verifies" in text and f"All {contents.size:,} entries" in text
    assert contents.checkpoint.root.hex() in page.text
    assert contents.checkpoint.key in page.text and contents.checkpoint.time in page.text
    assert "gpdpr.example/demo-witness at " + contents.checkpoint.time in text
    assert "not witnessed" not in text
    assert "Awaiting the next checkpoint none" in text
    assert '<a href="/log" aria-current="page">Activity log</a>' in page.text  # in the navigation
    # newest first, one page's worth, each linking to its entry
    shown = seqs_on(page.text)
    assert shown == list(range(contents.size - 1, contents.size - 1 - PER_PAGE, -1))
    # in plain words, not raw JSON
    assert "Agreement ended" in text and "Erasure cycle" in text
    assert "Ended on: 2026-01-01" in text
    assert '{"' not in page.text


def test_an_entry_shows_its_canonical_json_leaf_hash_and_checked_proof(site: Site) -> None:
    contents = store.read(folder(site))
    erasure = next(s for s in range(contents.size) if contents.entry(s)["type"] == "erasure")
    page = visitor(site).get(f"/log/entries/{erasure}")
    assert page.status_code == 200
    found = prove(Source(folder=folder(site)), erasure)
    text = texts(page.text)
    assert f"Entry {erasure}: Erasure cycle" in text
    assert contents.line(erasure).decode() in page.text.replace("&#34;", '"').replace("&quot;", '"')
    assert found.leaf.hex() in page.text and found.root.hex() in page.text
    assert all(step.hex() in page.text for step in found.proof) and found.proof
    # totals across all tables only (this cycle erased ten people or more: see
    # tests/test_erasure_counts.py for a smaller one)
    shown = text.split("What the")[0]
    assert re.search(r"People [\d,]+ Rows removed [\d,]+ $", shown), shown[-300:]
    details = contents.entry(erasure)["details"]
    assert set(details) == {"lake_version", "people", "rows_removed"} and details["people"] >= 10
    assert f"gpdpr log prove {erasure} --url http://testserver/log/files" in text


def test_unknown_out_of_range_and_malformed_entries_are_the_404_page(site: Site) -> None:
    size = store.read(folder(site)).size
    browser = visitor(site)
    for seq in (str(size), "99999999", "-1", "abc", "1.5", "0x1", "1e3", "9" * 40, "%20"):
        answer = browser.get(f"/log/entries/{seq}")
        assert answer.status_code == 404, seq
        assert "Page not found" in answer.text


def test_paging_goes_back_through_every_entry_once(site: Site) -> None:
    size = store.read(folder(site)).size
    browser = visitor(site)
    seen: list[int] = []
    pages = -(-size // PER_PAGE)
    for page in range(1, pages + 1):
        answer = browser.get(f"/log?page={page}")
        assert answer.status_code == 200
        assert f"page {page} of {pages}" in texts(answer.text)
        seen += seqs_on(answer.text)
    assert seen == list(range(size - 1, -1, -1))
    last = browser.get(f"/log?page={pages}").text
    assert 'rel="next"' not in last and 'rel="prev"' in last


def test_the_filter_shows_only_entries_of_the_type_chosen(site: Site) -> None:
    contents = store.read(folder(site))
    expired = [s for s in range(contents.size) if contents.entry(s)["type"] == "agreement.expired"]
    browser = visitor(site)
    first = browser.get("/log?type=agreement.expired")
    assert f"{EXPIRED:,} entries of this type" in texts(first.text)
    assert f'<option value="agreement.expired" selected>Agreement ended ({EXPIRED})' in first.text
    second = browser.get("/log?type=agreement.expired&page=2")
    assert "type=agreement.expired" in second.text  # the pager keeps the filter
    shown = (
        seqs_on(first.text)
        + seqs_on(second.text)
        + seqs_on(browser.get("/log?type=agreement.expired&page=3").text)
    )
    assert shown == expired[::-1]
    erasures = browser.get("/log?type=erasure")
    assert seqs_on(erasures.text) == [
        s for s in range(contents.size) if contents.entry(s)["type"] == "erasure"
    ]
    # a type the service knows but that has no entries yet: an empty list, not an error
    none_yet = browser.get("/log?type=reid.fulfilled")
    assert none_yet.status_code == 200 and "0 entries of this type" in texts(none_yet.text)


def test_bad_page_and_filter_values_are_refused_clearly_never_a_500(site: Site) -> None:
    browser = visitor(site)
    for query, message in (
        ("page=0", "There is no page 0"),
        ("page=-3", "There is no page -3"),
        ("page=9999", "There is no page 9999"),
        ("page=abc", "The request was not understood"),
        ("page=1.5", "The request was not understood"),
        ("page=" + "9" * 30, "There is no page"),
        ("type=no.such.type", "There is no type of entry called 'no.such.type'"),
        ("type=" + urllib.parse.quote("<script>alert(1)</script>"), "There is no type of entry"),
        ("type=erasure&page=2", "There is no page 2"),
    ):
        answer = browser.get(f"/log?{query}")
        assert answer.status_code == 400, query
        assert message in texts(answer.text), (query, texts(answer.text)[-300:])
        assert "<script>alert" not in answer.text


def test_verify_it_yourself_explains_honestly_with_the_commands_for_this_site(site: Site) -> None:
    page = visitor(site).get("/log/verify")
    assert page.status_code == 200
    text = texts(page.text)
    files = "http://testserver/log/files"
    assert f"python3 verify.py --url {files}" in text and "pip install gpdpr" not in text
    assert f"gpdpr log verify --url {files}" in text
    assert f"gpdpr log verify --url {files} --policy policy.txt --checkpoint checkpoint" in text
    pinned = (site.built.home / "keys" / "log" / "policy").read_text()
    assert all(line in text for line in pinned.splitlines())  # the pinned policy, shown
    assert re.search(rf"gpdpr log prove \d+ --url {re.escape(files)}", text)
    assert "rewritten, deleted, reordered or inserted" in text
    assert "What it does not prove" in text and "logged everything it did" in text
    assert "SHA-256(0x00 ||" in text and "SHA-256(0x01 || left || right)" in text
    assert 'href="/log/files/log.pub"' in page.text
    contents = store.read(folder(site))
    assert contents.checkpoint is not None and contents.checkpoint.key in page.text
    # the address follows the request's own
    other = TestClient(site.app, base_url="https://log.example.org").get("/log/verify")
    assert "gpdpr log verify --url https://log.example.org/log/files" in texts(other.text)


def test_every_entry_type_has_plain_words() -> None:
    assert set(KINDS) | set(AGGREGATES) | set(KEY_ENTRIES) <= set(TITLES)
    assert all(meaning_of(kind) for kind in set(KINDS) | set(AGGREGATES) | set(KEY_ENTRIES))


# ---- the public files --------------------------------------------------------------------------


def test_the_public_files_are_served_exactly_with_their_types(site: Site) -> None:
    browser = visitor(site)
    contents = store.read(folder(site))
    assert contents.checkpoint is not None
    for name, kind in (
        ("entries.jsonl", "application/x-ndjson"),
        ("checkpoint", "text/plain"),
        ("log.pub", "text/plain"),
        ("policy", "text/plain"),
        (f"checkpoints/{contents.checkpoint.size}", "text/plain"),
    ):
        answer = browser.get(f"/log/files/{name}")
        assert answer.status_code == 200, name
        assert answer.headers["content-type"].startswith(kind), name
        assert answer.content == (folder(site) / name).read_bytes(), name


def raw_status(base: str, path: str) -> int:
    """GET exactly this path (no client-side normalising of `..` or escapes)."""
    address = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(address.hostname or "", address.port)
    try:
        connection.putrequest("GET", path, skip_accept_encoding=True)
        connection.endheaders()
        return connection.getresponse().status
    finally:
        connection.close()


def test_nothing_but_the_log_files_can_be_fetched(site: Site) -> None:
    home = site.built.home
    assert (home / "keys" / "log" / "log.key").exists()  # what a traversal would be after
    (folder(site) / "notes.txt").write_text("not a published file")
    try:
        refused = [
            "/log/files/notes.txt",
            "/log/files/../keys/log/log.key",
            "/log/files/..%2F..%2Fkeys%2Flog%2Flog.key",
            "/log/files/%2e%2e/%2e%2e/central.db",
            "/log/files/..%2fcentral.db",
            "/log/files/checkpoints/../../keys/log/log.key",
            "/log/files/checkpoints/..%2F..%2Fcentral.db",
            "/log/files/checkpoints/%2E%2E",
            "/log/files/checkpoints/1.json.bak",
            "/log/files/checkpoints/x.json",
            "/log/files/checkpoints/999999",  # well formed, never signed
            "/log/files/checkpoints",
            "/log/files/",
            "/log/files/.checkpoint.json.partial",
            "/log/files/ENTRIES.JSONL",
            "/log/files/log.key",
            "/log/files/central.db",
            "/log/files/%00entries.jsonl",
        ]
        with running(site.app) as base:
            wrong = {path: s for path in refused if (s := raw_status(base, path)) != 404}
            assert wrong == {}
            assert raw_status(base, "/log/files/entries.jsonl") == 200
    finally:
        (folder(site) / "notes.txt").unlink()


def test_the_real_verifier_and_the_command_check_the_log_over_http(
    site: Site, tmp_path: Path
) -> None:
    with running(site.app) as base:
        files = f"{base}/log/files"
        pinned = cosigning.operator_policy(site.built.home / "keys")
        assert pinned is not None
        policy_file = tmp_path / "policy.txt"
        policy_file.write_text(pinned.render())
        verified = verify(Source(url=files), pinned)
        contents = store.read(folder(site))
        assert verified.size == contents.size and verified.root == contents.tree.root()
        found = prove(Source(url=files), 0)
        assert found.entry == contents.entry(0)
        kept = tmp_path / "checkpoint"
        kept.write_bytes(visitor(site).get("/log/files/checkpoint").content)
        verify_command = [*GPDPR, "log", "verify", "--url", files, "--policy", str(policy_file)]
        done = subprocess.run(
            verify_command,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert f"verified: {files}" in done.stdout and f"{contents.size:,} entries" in done.stdout
        # new events published: the kept checkpoint is proven a prefix of the new log
        with Session(site.built.engine) as session, session.begin():
            record(session, "agreement.expired", "gpdpr", {"agreement": "DSA-2099-0001"})
        publish_now(site.app)
        grown = verify(Source(url=files), pinned, kept.read_bytes(), str(kept))
        assert grown.since is not None and grown.since.size == contents.size
        assert grown.size > contents.size and grown.proof
        later = subprocess.run(
            [*verify_command, "--checkpoint", str(kept)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert later.returncode == 0, later.stderr
        assert "consistent" in later.stdout and f"({contents.size:,} entries" in later.stdout
        proved = subprocess.run(
            [*GPDPR, "log", "prove", str(grown.size - 1), "--url", files],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proved.returncode == 0 and "included" in proved.stdout, proved.stderr
        # and the page shows the new checkpoint at once
        assert f"All {grown.entries:,} entries" in texts(visitor(site).get("/log").text)


# ---- a damaged log -----------------------------------------------------------------------------


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def _rewrite_byte(data: bytes) -> bytes:
    lines = _lines(data)
    changed = lines[3].replace(b'"time":"2', b'"time":"1', 1)
    assert changed != lines[3]
    lines[3] = changed
    return b"\n".join(lines) + b"\n"


def _delete_line(data: bytes) -> bytes:
    lines = _lines(data)
    return b"\n".join(lines[:2] + lines[3:]) + b"\n"


def _reorder(data: bytes) -> bytes:
    lines = _lines(data)
    lines[1], lines[2] = lines[2], lines[1]
    return b"\n".join(lines) + b"\n"


def _truncate(data: bytes) -> bytes:
    return b"\n".join(_lines(data)[:-2]) + b"\n"


def _renumbered_delete(data: bytes) -> bytes:
    entries = [orjson.loads(line) for line in _lines(data)]
    del entries[4]
    fixed = [{**e, "seq": n} for n, e in enumerate(entries)]
    return b"".join(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) + b"\n" for e in fixed)


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (_rewrite_byte, "do not hash to the signed root"),
        (_delete_line, "line 3 should be entry 2 but is entry 3"),
        (_reorder, "line 2 should be entry 1 but is entry 2"),
        (_truncate, "the log holds only"),
        (_renumbered_delete, "the log holds only"),
    ],
    ids=["rewrite-one-byte", "delete-a-line", "reorder-two-lines", "truncate", "delete-renumber"],
)
def test_a_tampered_log_is_shown_as_not_verifying_and_says_what_failed(
    site: Site, tamper: object, named: str
) -> None:
    assert callable(tamper)
    entries = folder(site) / store.ENTRIES
    original = entries.read_bytes()
    entries.write_bytes(tamper(original))
    try:
        browser = visitor(site)
        for path in ("/log", "/log/entries/0", "/log/verify", "/log?type=erasure"):
            answer = browser.get(path)
            assert answer.status_code == 200, path
            text = texts(answer.text)
            assert "this log does NOT verify" in text, path
            assert named in text, (path, text[:1500])
            assert "The log verifies" not in text and "Proof that it is in" not in text
            assert str(site.built.home) not in answer.text  # no paths from the service's disks
        # the raw files are still served as they are, for anyone to see the damage
        assert browser.get("/log/files/entries.jsonl").content == tamper(original)
    finally:
        entries.write_bytes(original)
    assert "The log verifies" in texts(visitor(site).get("/log").text)


def test_a_tampered_checkpoint_or_a_missing_key_is_shown_as_not_verifying(site: Site) -> None:
    checkpoint = folder(site) / store.CHECKPOINT
    public = folder(site) / store.PUBLIC_KEY
    signed, pem = checkpoint.read_bytes(), public.read_bytes()
    size = store.read(folder(site)).size
    try:
        checkpoint.write_bytes(signed.replace(f"\n{size}\n".encode(), f"\n{size - 1}\n".encode()))
        assert "altered after signing" in texts(visitor(site).get("/log").text)
        checkpoint.write_bytes(signed)
        public.unlink()
        assert f"but no {store.PUBLIC_KEY}" in texts(visitor(site).get("/log").text)
        public.write_bytes(pem)
        checkpoint.unlink()
        assert "no signed checkpoint" in texts(visitor(site).get("/log").text)
    finally:
        checkpoint.write_bytes(signed)
        public.write_bytes(pem)
    assert "The log verifies" in texts(visitor(site).get("/log").text)


def test_an_unreadable_entries_file_is_shown_as_a_problem_not_a_500(site: Site) -> None:
    entries = folder(site) / store.ENTRIES
    saved = entries.with_name("saved.jsonl")
    entries.rename(saved)
    entries.mkdir()  # a folder where the file should be: reading it fails
    try:
        page = visitor(site).get("/log")
        assert page.status_code == 200
        assert "this log does NOT verify" in page.text
        assert "cannot be read" in page.text
        assert visitor(site).get("/log/files/entries.jsonl").status_code == 404
    finally:
        entries.rmdir()
        saved.rename(entries)
    assert "The log verifies" in texts(visitor(site).get("/log").text)


def test_a_rewrite_that_keeps_the_files_size_and_times_is_caught_when_rechecked(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pages keep a verified result while the files look unchanged; at most RECHECK_SECONDS
    later they hash everything again anyway."""
    import os

    from gpdpr.portal import log

    entries = folder(site) / store.ENTRIES
    state_of(folder(site))
    original, stat = entries.read_bytes(), entries.stat()
    with open(entries, "r+b") as f:  # same size, same inode
        f.write(_rewrite_byte(original))
    os.utime(entries, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    try:
        assert state_of(folder(site)).problem is None  # unchanged to the look of it: kept
        monkeypatch.setattr(log, "RECHECK_SECONDS", 0.0)
        assert "do not hash to the signed root" in (state_of(folder(site)).problem or "")
    finally:
        entries.write_bytes(original)


def test_a_home_with_nothing_published_yet_says_so(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    app = create_app(home, passwords=FAST, rate_limit=RateLimit())
    try:
        browser = TestClient(app)
        page = browser.get("/log")
        assert page.status_code == 200
        assert "Nothing has been published to the log yet" in page.text
        assert "does NOT verify" not in page.text and "The log verifies" not in page.text
        assert browser.get("/log/verify").status_code == 200
        assert browser.get("/log/entries/0").status_code == 404
        assert browser.get("/log/files/entries.jsonl").status_code == 404
    finally:
        app.state.portal.close()
        shutil.rmtree(home)


# ---- no personal data --------------------------------------------------------------------------


def test_no_page_or_file_of_the_log_holds_an_opted_out_patients_number_or_pseudonym(
    site: Site,
) -> None:
    """The three patients who opted out and were erased are in the log only as counts: their
    NHS numbers and lake pseudonyms (the canaries) appear nowhere in what the log pages serve."""
    browser = visitor(site)
    contents = store.read(folder(site))
    served = [
        browser.get(path).content
        for path in (
            "/log",
            "/log/verify",
            "/log/files/entries.jsonl",
            "/log/files/checkpoint",
            *(f"/log?page={n}" for n in range(1, 5)),
            *(f"/log?type={t}" for t in state_of(folder(site)).by_type),
            *(f"/log/entries/{s}" for s in range(contents.size)),
        )
    ]
    assert all(served)
    canaries = [c.encode() for c in site.opted_out + site.pseudonyms]
    canaries += [c[:16].encode() for c in site.pseudonyms]  # no part of one either
    leaks = [c for c in canaries for body in served if c in body]
    assert leaks == []
    handles = [LEAD, COLLEAGUE, *PANEL, *CHECKERS]
    assert [h for h in handles if h.encode() in b"".join(served)] == []  # roles, not people
