"""Staff sign-in at their organisation's OpenID Connect provider: a small provider served over
HTTP on loopback here (discovery, keys, authorization and token endpoints, as a real one), and
the portal's whole flow against it: signed in as the staff member with the verified email,
their second factor still asked for, and every bad answer refused."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import FastAPI
from fastapi.testclient import TestClient

from governing import LEAD
from gpdpr.errors import UserError
from gpdpr.portal.app import create_app
from gpdpr.portal.security import RateLimit
from gpdpr.portal.staff_oidc import ProviderConfig
from portal_home import FAST
from portal_small import small_home

CLIENT_ID, SECRET = "gpdpr-staff", "s3cret-of-the-portal"


@dataclass
class Provider:
    """What the provider will say about the next person who signs in there."""

    issuer: str = ""
    email: str = f"{LEAD}@example.org"
    verified: bool = True
    wrong_key: bool = False
    wrong_nonce: bool = False
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def jwks(self) -> dict[str, Any]:
        raw = self.key.public_key().public_bytes_raw()
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "kid": "k1", "alg": "EdDSA"}]}

    def token(self, grant: dict[str, str]) -> str:
        signer = Ed25519PrivateKey.generate() if self.wrong_key else self.key
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "sub": "staff-1",
            "iat": now,
            "exp": now + 300,
            "nonce": "another" if self.wrong_nonce else grant["nonce"],
            "email": self.email,
            "email_verified": self.verified,
        }
        return jwt.encode(claims, signer, algorithm="EdDSA", headers={"kid": "k1"})


def handler(provider: Provider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            if url.path == "/.well-known/openid-configuration":
                self.answer(
                    200,
                    {
                        "issuer": provider.issuer,
                        "authorization_endpoint": provider.issuer + "/authorize",
                        "token_endpoint": provider.issuer + "/token",
                        "jwks_uri": provider.issuer + "/jwks",
                    },
                )
            elif url.path == "/jwks":
                self.answer(200, provider.jwks())
            elif url.path == "/authorize":  # the person is signed in here already
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                code = secrets.token_urlsafe(16)
                provider.codes[code] = query
                back = (
                    f"{query['redirect_uri']}?{urlencode({'code': code, 'state': query['state']})}"
                )
                self.send_response(302)
                self.send_header("Location", back)
                self.end_headers()
            else:
                self.answer(404, {})

        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            basic = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()
            grant = provider.codes.pop(form.get("code", ""), None)
            verifier = form.get("code_verifier", "")
            challenge = (
                base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
                .rstrip(b"=")
                .decode()
            )
            if (
                self.headers.get("Authorization") != f"Basic {basic}"
                or grant is None
                or grant["code_challenge"] != challenge
                or grant["redirect_uri"] != form.get("redirect_uri")
            ):
                self.answer(400, {"error": "invalid_grant"})
                return
            self.answer(200, {"id_token": provider.token(grant), "token_type": "Bearer"})

    return Handler


@dataclass
class World:
    app: FastAPI
    provider: Provider


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    provider = Provider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(provider))
    provider.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    folder = tmp_path_factory.mktemp("staff-oidc")
    settings = folder / "oidc.json"
    settings.write_text(
        json.dumps(
            {
                "name": "University of Leeds",
                "issuer": provider.issuer,
                "client_id": CLIENT_ID,
                "client_secret": SECRET,
            }
        )
    )
    app = create_app(
        small_home(folder),
        passwords=FAST,
        rate_limit=RateLimit(),
        organisation_provider=str(settings),
    )
    yield World(app, provider)
    app.state.portal.close()
    server.shutdown()


def through_the_provider(world: World, **says: Any) -> tuple[TestClient, httpx.Response, str]:
    """A visitor who starts at the portal, is signed in at the provider (who says `says`), and
    comes back: the portal's answer to the callback."""
    world.provider.__dict__.update(
        {"email": f"{LEAD}@example.org", "verified": True, "wrong_key": False, "wrong_nonce": False}
        | says
    )
    client = TestClient(world.app, follow_redirects=False)
    assert 'href="/sign-in/organisation"' in client.get("/sign-in").text
    start = client.get("/sign-in/organisation")
    assert start.status_code == 303 and start.headers["location"].startswith(world.provider.issuer)
    back = httpx.get(start.headers["location"], follow_redirects=False)
    assert back.status_code == 302
    callback = urlparse(back.headers["location"])
    path = f"{callback.path}?{callback.query}"
    return client, client.get(path), path


def test_a_staff_member_signs_in_at_their_organisation(world: World) -> None:
    client, answer, _ = through_the_provider(world)
    assert answer.status_code == 303 and answer.headers["location"] == "/applications"
    assert client.get("/applications").status_code == 200


@pytest.mark.parametrize(
    ("says", "reason"),
    [
        ({"verified": False}, "has not verified this email address"),
        ({"email": "stranger@example.org"}, "no staff account here has the email"),
        ({"wrong_key": True}, "was not accepted"),
        ({"wrong_nonce": True}, "for another sign-in"),
    ],
)
def test_a_token_the_portal_cannot_trust_signs_nobody_in(
    world: World, says: dict[str, Any], reason: str
) -> None:
    client, answer, _ = through_the_provider(world, **says)
    assert answer.status_code == 400 and reason in answer.text
    assert client.get("/applications").status_code == 303


def test_a_callback_that_did_not_start_here_or_comes_twice_is_refused(world: World) -> None:
    client, answer, callback = through_the_provider(world)
    assert answer.status_code == 303
    again = client.get(callback)
    assert again.status_code == 400 and "already been used" in again.text
    stranger = TestClient(world.app, follow_redirects=False)
    forged = stranger.get("/sign-in/organisation/callback?code=abc&state=def")
    assert forged.status_code in (400, 404) and stranger.get("/applications").status_code == 303


def test_without_a_provider_configured_there_is_no_such_sign_in(tmp_path: Path) -> None:
    app = create_app(small_home(tmp_path), passwords=FAST, rate_limit=RateLimit())
    try:
        client = TestClient(app, follow_redirects=False)
        assert "/sign-in/organisation" not in client.get("/sign-in").text
        assert client.get("/sign-in/organisation").status_code == 404
    finally:
        app.state.portal.close()


def test_bad_settings_are_refused_naming_what_is_missing(tmp_path: Path) -> None:
    settings = tmp_path / "oidc.json"
    settings.write_text(json.dumps({"name": "X", "issuer": "http://idp.example"}))
    with pytest.raises(UserError, match="lacks client_id, client_secret"):
        ProviderConfig.load(settings)
    settings.write_text(
        json.dumps(
            {"name": "X", "issuer": "http://idp.example", "client_id": "a", "client_secret": "b"}
        )
    )
    with pytest.raises(UserError, match="https://"):
        ProviderConfig.load(settings)
