"""Extracting many practices at once, as a system supplier does overnight: one process per core,
one practice per task, each into its own package."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from gpdpr.practice.extract import ExtractRequest, extract


def _one(request: ExtractRequest) -> dict[str, Any]:
    return extract(request)


def extract_many(
    practices: list[Path],
    packages: Path,
    kits: Path,
    workers: int = 0,
    on_done: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Extract each practice folder into packages/<folder name>, with the kit in kits/<name>.
    Returns the manifests by practice. The first failure stops the run and is raised."""
    packages.mkdir(parents=True, exist_ok=True)
    requests = [ExtractRequest(p, packages / p.name, kits / p.name) for p in practices]
    workers = workers or min(len(requests), os.cpu_count() or 1)
    manifests: dict[str, dict[str, Any]] = {}
    if workers <= 1:
        for request in requests:
            manifests[request.practice.name] = _one(request)
            if on_done:
                on_done(request.practice.name, manifests[request.practice.name])
        return manifests
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_one, r): r.practice.name for r in requests}
        for future in as_completed(futures):
            name = futures[future]
            manifests[name] = future.result()
            if on_done:
                on_done(name, manifests[name])
    return dict(sorted(manifests.items()))
