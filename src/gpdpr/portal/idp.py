"""A stand-in for NHS login: a small OpenID Connect identity provider for the demo and the tests.

It does what the portal needs from the real one, the same way: the authorization code flow with
`state`, `nonce` and PKCE (S256). A patient signs in here with an email address and password;
the provider sends the browser back to the portal with a one-time code; the portal exchanges the
code (with the PKCE verifier only it holds) for an ID token, signed with the provider's Ed25519
key, which carries the NHS number in its `nhs_number` claim as NHS login's does. The portal
verifies the token with PyJWT against the provider's published key (its JWKS) and hands the
number straight to the custodian.

The provider keeps its own folder (`HOME/idp/`: its signing key and its accounts), apart from the
central service's data, as NHS login is apart from it. In this stand-in the portal exchanges the
code by calling `exchange` in-process; against NHS login it is a back-channel POST to the token
endpoint, authenticated with a signed client assertion.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gpdpr.errors import UserError
from gpdpr.identifiers import is_valid_nhs_number
from gpdpr.portal.security import Passwords

ISSUER = "https://login.gpdpr.invalid/demo"
CLIENT_ID = "gpdpr-portal"
CALLBACK = "/patient/callback"
CODE_SECONDS = 60
TOKEN_SECONDS = 300
KEY_FILE = "signing.pem"
ACCOUNTS_FILE = "accounts.json"


def s256(verifier: str) -> str:
    """The PKCE S256 challenge for a verifier."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True)
class _Grant:
    email: str
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str
    expires: float


class IdentityProvider:
    def __init__(self, folder: Path, passwords: Passwords) -> None:
        self.folder = folder
        self.passwords = passwords
        folder.mkdir(parents=True, exist_ok=True)
        os.chmod(folder, 0o700)
        self._key = self._signing_key()
        self._codes: dict[str, _Grant] = {}
        self._lock = threading.Lock()

    # ---- keys and accounts ---------------------------------------------------------------------

    def _signing_key(self) -> Ed25519PrivateKey:
        path = self.folder / KEY_FILE
        if not path.exists():
            key = Ed25519PrivateKey.generate()
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            partial = path.with_name(f".{path.name}.partial")
            partial.write_bytes(pem)
            os.chmod(partial, 0o600)
            partial.replace(path)
        loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(loaded, Ed25519PrivateKey):
            raise UserError(f"{path} is not an Ed25519 key: remove it to make a new one")
        return loaded

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self._key.public_key()

    def jwks(self) -> dict[str, Any]:
        """The provider's public key as a JSON Web Key Set (what relying parties fetch)."""
        raw = self.public_key.public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        return {"keys": [{"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig", "alg": "EdDSA"}]}

    def _accounts(self) -> dict[str, dict[str, str]]:
        path = self.folder / ACCOUNTS_FILE
        if not path.exists():
            return {}
        return dict(orjson.loads(path.read_bytes()))

    def add_account(self, email: str, password: str, nhs_number: str, given_name: str) -> None:
        """An account that signs in as the person with this NHS number (replaced if the email
        address has one already)."""
        email = email.strip().lower()
        number = "".join(nhs_number.split())
        if "@" not in email:
            raise UserError(f"{email!r} is not an email address")
        if not is_valid_nhs_number(number):
            raise UserError("that is not a valid NHS number")
        with self._lock:
            accounts = self._accounts()
            accounts[email] = {
                "password_hash": self.passwords.hash(password),
                "nhs_number": number,
                "given_name": given_name,
            }
            path = self.folder / ACCOUNTS_FILE
            partial = path.with_name(f".{path.name}.partial")
            partial.write_bytes(orjson.dumps(accounts, option=orjson.OPT_INDENT_2))
            os.chmod(partial, 0o600)
            partial.replace(path)

    def check_password(self, email: str, password: str) -> bool:
        account = self._accounts().get(email.strip().lower())
        return self.passwords.verify(account["password_hash"] if account else None, password)

    # ---- the flow ------------------------------------------------------------------------------

    def check_request(self, params: dict[str, str], redirect_uri: str) -> str | None:
        """Why an authorization request cannot go ahead (None: it can). `redirect_uri` is the
        one registered for the portal."""
        if params.get("response_type") != "code":
            return "response_type must be code"
        if params.get("client_id") != CLIENT_ID:
            return "unknown client"
        if params.get("redirect_uri") != redirect_uri:
            return "redirect_uri is not the one registered for this client"
        if "openid" not in params.get("scope", "").split():
            return "scope must include openid"
        if (
            params.get("code_challenge_method") != "S256"
            or len(params.get("code_challenge", "")) < 43
        ):
            return "PKCE with S256 is required"
        for name in ("state", "nonce"):
            if len(params.get(name, "")) < 16:
                return f"{name} is required"
        return None

    def issue_code(self, email: str, params: dict[str, str]) -> str:
        code = secrets.token_urlsafe(32)
        grant = _Grant(
            email.strip().lower(),
            params["client_id"],
            params["redirect_uri"],
            params["code_challenge"],
            params["nonce"],
            time.time() + CODE_SECONDS,
        )
        with self._lock:
            self._codes[code] = grant
        return code

    def exchange(self, code: str, client_id: str, redirect_uri: str, verifier: str) -> str:
        """The ID token for a code (once only), or a UserError."""
        with self._lock:
            grant = self._codes.pop(code, None)
        if grant is None or grant.expires < time.time():
            raise UserError("the sign-in code is unknown, used or expired: sign in again")
        if grant.client_id != client_id or grant.redirect_uri != redirect_uri:
            raise UserError("the sign-in code was issued to another client: sign in again")
        if not hmac.compare_digest(s256(verifier), grant.challenge):
            raise UserError("the PKCE verifier does not match the challenge: sign in again")
        account = self._accounts().get(grant.email)
        if account is None:
            raise UserError("the account no longer exists")
        issued = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": client_id,
            "sub": hashlib.sha256(f"{ISSUER} {grant.email}".encode()).hexdigest(),
            "iat": issued,
            "exp": issued + TOKEN_SECONDS,
            "nonce": grant.nonce,
            "nhs_number": account["nhs_number"],
            "given_name": account["given_name"],
            "identity_proofing_level": "P9",
        }
        return jwt.encode(claims, self._key, algorithm="EdDSA", headers={"kid": "demo"})


def verify_id_token(token: str, jwks: dict[str, Any], nonce: str) -> dict[str, Any]:
    """The claims of an ID token whose signature (against the provider's JWKS), issuer,
    audience, times and nonce are all right; a UserError otherwise."""
    try:
        key = jwt.PyJWK(jwks["keys"][0]).key
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=["EdDSA"],
            audience=CLIENT_ID,
            issuer=ISSUER,
            options={"require": ["iss", "aud", "sub", "iat", "exp", "nonce", "nhs_number"]},
            leeway=30,
        )
    except jwt.PyJWTError as exc:
        raise UserError(
            f"the identity provider's token was not accepted ({exc}): sign in again"
        ) from None
    if not hmac.compare_digest(str(claims["nonce"]), nonce):
        raise UserError("the identity provider's token was for another sign-in: sign in again")
    return claims
