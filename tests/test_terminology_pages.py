"""The terminology as the public and researchers see it: the "what we collect" page names the
release codes are read by (and says when it is the small embedded one), and each code set's
expression with the size of its expansion in that release."""

from __future__ import annotations

import html
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gpdpr.portal.app import create_app
from gpdpr.spec import shipped
from gpdpr.terminology import store
from terminology_release import IVF_CHILD, write_release


def page(home: Path, path: str) -> str:
    with TestClient(create_app(home)) as client:
        answer = client.get(path)
    assert answer.status_code == 200, answer.text
    return html.unescape(answer.text)


def test_what_we_collect_names_the_embedded_release(tmp_path: Path) -> None:
    text = page(tmp_path, "/what-we-collect")
    release = store.embedded()
    assert f"{release.name}</strong>, version {release.version}" in text
    assert "the small release embedded in gpdpr" in text
    for code_set in shipped().code_sets.values():
        size = len(code_set.expand())
        assert f"<code>{code_set.ecl}</code> stands for ({size:,} in the release below)" in text


def test_what_we_collect_names_a_loaded_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    into = tmp_path / "store"
    store.load(write_release(tmp_path / "rf2")).save(into, source="test")
    monkeypatch.setenv(store.ENV, str(into))
    (tmp_path / "home").mkdir()
    text = page(tmp_path / "home", "/what-we-collect")
    assert "SNOMED CT TEST</strong>, version 20260101, with 10 concepts" in text
    assert "embedded" not in text
    # IVF, the child concept this release puts under it, and Artificial insemination (named,
    # so counted though this release lacks it).
    assert shipped().code_sets["assisted_conception"].expand() >= {IVF_CHILD}
    assert "(3 in the release below)" in text
