"""Staff sign-in through their organisation's OpenID Connect provider, instead of a password.

Configured by a JSON file named in GPDPR_STAFF_OIDC (or given to `create_app`): the provider's
`name` (shown on the sign-in page), its `issuer`, and the portal's `client_id` and
`client_secret` there. The provider's endpoints come from its discovery document
(`ISSUER/.well-known/openid-configuration`), whose own `issuer` must be the one configured.

The flow is the authorization code flow with `state`, `nonce` and PKCE (S256), as for patients.
The code is exchanged at the provider's token endpoint (client_secret_basic); the ID token is
checked against the provider's published keys (signature, issuer, audience, times, nonce), and
its `email`, which the provider must say it verified, names the staff member: exactly one person
in the governance record with that email address and a staff role. Their second factor, if they
enrolled one, is still asked for.
"""

from __future__ import annotations

import base64
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson

from gpdpr.errors import UserError

STAFF_OIDC_ENV = "GPDPR_STAFF_OIDC"
TIMEOUT_SECONDS = 10
ALGORITHMS = ["RS256", "ES256", "EdDSA"]
_FIELDS = ("name", "issuer", "client_id", "client_secret")


@dataclass(frozen=True)
class ProviderConfig:
    name: str
    issuer: str
    client_id: str
    client_secret: str

    @classmethod
    def load(cls, path: Path) -> ProviderConfig:
        """The configuration in `path`, or a UserError saying what is wrong with it."""
        try:
            data = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError) as exc:
            raise UserError(
                f"cannot read the staff OpenID Connect settings {path}: {exc}"
            ) from None
        if not isinstance(data, dict):
            raise UserError(f"{path} should hold a JSON object with {', '.join(_FIELDS)}")
        missing = [f for f in _FIELDS if not isinstance(data.get(f), str) or not data[f].strip()]
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)} (each a non-empty string)")
        if not data["issuer"].startswith("https://") and "://127.0.0.1" not in data["issuer"]:
            raise UserError(f"{path}: the issuer must be an https:// address")
        return cls(*(str(data[f]).strip() for f in _FIELDS))


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as answer:
        found: dict[str, Any] = orjson.loads(answer.read())
    return found


class OrganisationProvider:
    """One organisation's provider, its discovery document and keys fetched when first needed
    (and the keys again when a token names one not seen yet)."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._metadata: dict[str, Any] | None = None
        self._keys: jwt.PyJWKSet | None = None
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.config.name

    def metadata(self) -> dict[str, Any]:
        with self._lock:
            if self._metadata is None:
                url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
                found = self._fetch(url, "discovery document")
                if found.get("issuer") != self.config.issuer:
                    raise UserError(
                        "the organisation's sign-in service names another issuer than the one "
                        "configured: check GPDPR_STAFF_OIDC"
                    )
                self._metadata = found
            return self._metadata

    def authorize_url(self, redirect_uri: str, state: str, nonce: str, challenge: str) -> str:
        query = urllib.parse.urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": redirect_uri,
                "scope": "openid email",
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        return f"{self.metadata()['authorization_endpoint']}?{query}"

    def exchange(self, code: str, redirect_uri: str, verifier: str) -> str:
        """The ID token for a code, from the provider's token endpoint."""
        body = urllib.parse.urlencode(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
            }
        ).encode()
        secret = f"{_quote(self.config.client_id)}:{_quote(self.config.client_secret)}"
        request = urllib.request.Request(
            self.metadata()["token_endpoint"],
            data=body,
            headers={
                "Authorization": "Basic " + base64.b64encode(secret.encode()).decode(),
                "Content-Type": "application/x-www-form-urlencoded",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as answer:
                token = orjson.loads(answer.read()).get("id_token")
        except (OSError, orjson.JSONDecodeError) as exc:
            raise UserError(
                f"the organisation's sign-in service did not give a token ({exc}): sign in again"
            ) from None
        if not isinstance(token, str):
            raise UserError("the organisation's sign-in service gave no ID token: sign in again")
        return token

    def verify(self, token: str, nonce: str) -> dict[str, Any]:
        """The claims of an ID token from this provider for this sign-in, or a UserError."""
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            key = self._key(kid)
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=ALGORITHMS,
                audience=self.config.client_id,
                issuer=self.config.issuer,
                options={"require": ["iss", "aud", "sub", "iat", "exp", "nonce", "email"]},
                leeway=30,
            )
        except jwt.PyJWTError as exc:
            raise UserError(
                f"the organisation's token was not accepted ({exc}): sign in again"
            ) from None
        if claims.get("nonce") != nonce:
            raise UserError("the organisation's token was for another sign-in: sign in again")
        if claims.get("email_verified") is not True:
            raise UserError(
                "the organisation's sign-in service has not verified this email address"
            )
        return claims

    def _key(self, kid: str | None) -> Any:
        jwks_uri = self.metadata()["jwks_uri"]
        for attempt in range(2):  # once more after fetching the keys again: they may rotate
            with self._lock:
                if self._keys is None or attempt:
                    self._keys = jwt.PyJWKSet.from_dict(self._fetch(jwks_uri, "keys"))
                keys = self._keys
            for key in keys.keys:
                if kid is None or key.key_id == kid:
                    return key.key
        raise jwt.InvalidTokenError("signed with a key the provider does not publish")

    def _fetch(self, url: str, what: str) -> dict[str, Any]:
        try:
            return _get_json(url)
        except (OSError, orjson.JSONDecodeError) as exc:
            raise UserError(
                f"cannot reach the organisation's sign-in service for its {what} ({exc}): "
                "try again later, or sign in with your handle and password"
            ) from None


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def configured(path: str | None = None) -> OrganisationProvider | None:
    """The provider configured by `path` or GPDPR_STAFF_OIDC (None when neither is set)."""
    import os

    chosen = path if path is not None else os.environ.get(STAFF_OIDC_ENV, "").strip()
    return OrganisationProvider(ProviderConfig.load(Path(chosen))) if chosen else None
