"""The custodian's pseudonym service: `gpdpr custodian serve`.

Practices send blinded elements (gpdpr.practice.custodian_client has the wire format); the service
multiplies each by the pseudonym key and signs its answer. It never sees an NHS number, and the key
never leaves it. Every request must be signed by a practice the custodian issued a kit to (its
public key in KEYS/practices/<ODS>/signing.pub), be fresh (time within `CLOCK_SKEW`, nonce never
seen before) and keep within the practice's daily allowance. Each practice's evaluations are
counted per day (UTC) in HOME/custodian/evaluations.sqlite3; `daily_counts` reads them for the
public log, and GET /v1/counts serves them to anyone (they name practices, never people).
"""

from __future__ import annotations

import base64
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from gpdpr.custodian.keys import ODS_PATTERN, read_pseudonym_key, read_service_key
from gpdpr.errors import UserError
from gpdpr.practice import oprf
from gpdpr.practice.custodian_client import EVALUATE_PATH, request_message, response_message
from gpdpr.practice.kit import SIGNING_PUB, read_public_key

CLOCK_SKEW = timedelta(minutes=5)
# A 10,000-patient practice's historic extract asks for about 10,000 patients, a few thousand
# postcodes and its staff: well inside one day's allowance. A stolen kit can ask no faster.
DAILY_LIMIT = 60_000
COUNTS_FILE = "evaluations.sqlite3"


@dataclass(frozen=True)
class DailyCount:
    """One practice's evaluations on one day: what the public log publishes."""

    day: str
    practice: str
    evaluations: int

    def record(self) -> dict[str, object]:
        return {
            "kind": "custodian.evaluations",
            "day": self.day,
            "practice": self.practice,
            "evaluations": self.evaluations,
        }


class Counts:
    """Evaluations per practice per day, kept in SQLite so they survive a restart."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / COUNTS_FILE
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute(
                "create table if not exists evaluations (day text not null, practice text not "
                "null, evaluations integer not null, primary key (day, practice))"
            )

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("begin immediate")
            yield db
            db.execute("commit")
        except BaseException:
            db.execute("rollback")
            raise
        finally:
            db.close()

    def take(self, day: str, practice: str, wanted: int, limit: int) -> int | None:
        """Count `wanted` evaluations if they keep within `limit`; the count before, or None if
        they would exceed it (nothing counted then)."""
        with self._lock, self._connect() as db:
            row = db.execute(
                "select evaluations from evaluations where day = ? and practice = ?",
                (day, practice),
            ).fetchone()
            used = int(row[0]) if row else 0
            if used + wanted > limit:
                return None
            db.execute(
                "insert into evaluations values (?, ?, ?) on conflict (day, practice) do update "
                "set evaluations = evaluations + excluded.evaluations",
                (day, practice, wanted),
            )
            return used

    def daily(self, day: str | None = None) -> list[DailyCount]:
        with self._lock, self._connect() as db:
            rows = db.execute(
                "select day, practice, evaluations from evaluations"
                + (" where day = ?" if day else "")
                + " order by day, practice",
                (day,) if day else (),
            ).fetchall()
        return [DailyCount(str(d), str(p), int(n)) for d, p, n in rows]


def daily_counts(home: Path, day: str | None = None) -> list[DailyCount]:
    """Every practice's evaluations per day (or on one day), for the public log: the service
    over HOME/keys counts into HOME/custodian."""
    return Counts(home / "custodian").daily(day)


class _Nonces:
    """Nonces seen within the clock window: a replayed request is refused."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def fresh(self, practice: str, nonce: str) -> bool:
        now = time.monotonic()
        horizon = 2 * CLOCK_SKEW.total_seconds()
        with self._lock:
            for old in [k for k, t in self._seen.items() if now - t > horizon]:
                del self._seen[old]
            key = f"{practice}:{nonce}"
            if key in self._seen:
                return False
            self._seen[key] = now
            return True


def create_app(keys: Path, counts_folder: Path, daily_limit: int = DAILY_LIMIT) -> FastAPI:
    """The service over a key folder, counting into `counts_folder`."""
    pseudonym_key = read_pseudonym_key(keys).key
    service_key = read_service_key(keys)
    counts = Counts(counts_folder)
    nonces = _Nonces()
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    def refuse(status: int, why: str) -> Response:
        return PlainTextResponse(why, status_code=status)

    @app.post(EVALUATE_PATH)
    async def evaluate(request: Request) -> Response:
        practice = request.headers.get("Gpdpr-Practice", "")
        stamp = request.headers.get("Gpdpr-Time", "")
        nonce = request.headers.get("Gpdpr-Nonce", "")
        signature = request.headers.get("Gpdpr-Signature", "")
        if not ODS_PATTERN.match(practice) or not (16 <= len(nonce) <= 64 and nonce.isalnum()):
            return refuse(400, "Gpdpr-Practice must be an ODS code and Gpdpr-Nonce 16-64 letters")
        try:
            public = read_public_key(keys / "practices" / practice / SIGNING_PUB)
        except UserError:
            return refuse(403, f"{practice} has not been issued a kit by this custodian")
        body = await request.body()
        try:
            public.verify(
                base64.b64decode(signature, validate=True),
                request_message(practice, stamp, nonce, EVALUATE_PATH, body),
            )
        except (InvalidSignature, ValueError):
            return refuse(401, f"the request is not signed by {practice}'s key")
        try:
            sent = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        except ValueError:
            return refuse(400, "Gpdpr-Time must be a UTC time like 2026-12-06T13:00:00Z")
        now = datetime.now(UTC)
        if abs(now - sent) > CLOCK_SKEW:
            return refuse(401, "Gpdpr-Time is too far from the custodian's clock; check yours")
        if not nonces.fresh(practice, nonce):
            return refuse(401, "this request was already answered (its nonce is used)")
        size = oprf.ELEMENT_BYTES
        if not body or len(body) % size:
            return refuse(400, f"the body must be blinded elements of {size} bytes each")
        wanted = len(body) // size
        day = now.strftime("%Y-%m-%d")
        if counts.take(day, practice, wanted, daily_limit) is None:
            return refuse(
                429,
                f"{practice} would exceed its {daily_limit:,} evaluations for {day}; ask the "
                "custodian if a larger extract is due",
            )
        try:
            # Off the event loop: a large batch must not stall other practices' requests.
            evaluated = await run_in_threadpool(
                oprf.blind_evaluate,
                pseudonym_key,
                [body[i : i + size] for i in range(0, len(body), size)],
            )
        except oprf.OprfError:
            return refuse(400, "the body holds something that is not a ristretto255 element")
        answer = b"".join(evaluated)
        signed = base64.b64encode(service_key.sign(response_message(signature, answer))).decode()
        return Response(
            answer,
            media_type="application/octet-stream",
            headers={"Gpdpr-Signature": signed},
        )

    @app.get("/v1/counts")
    def counts_page(day: str | None = None) -> Response:
        return JSONResponse([c.record() for c in counts.daily(day)])

    return app


def counts_folder(keys: Path) -> Path:
    """Where a key folder's service counts: beside it (HOME/custodian for HOME/keys), never in
    it, since the counts are public."""
    return keys.parent / "custodian"


@contextmanager
def running(keys: Path, daily_limit: int = DAILY_LIMIT) -> Iterator[str]:
    """The service on a free port in a background thread for the block; its base URL. For the
    demo, the tests and the benchmarks, which need a real one."""
    from gpdpr.portal.serve import running as serving

    with serving(create_app(keys, counts_folder(keys), daily_limit)) as url:
        yield url


def serve(
    keys: Path, host: str = "127.0.0.1", port: int = 8471, daily_limit: int = DAILY_LIMIT
) -> None:
    """Serve until stopped (Ctrl-C)."""
    import uvicorn

    app = create_app(keys, counts_folder(keys), daily_limit)
    uvicorn.run(app, host=host, port=port, log_level="warning", proxy_headers=False)
