"""A content-addressed cache for expensive results.

An artifact is stored under a key made of its name, its configuration (any JSON-serialisable
mapping) and a fingerprint of the library's own source code.  Changing a hyperparameter or any
line of ``stagewise`` therefore misses the cache, and a prose-only edit of the book hits it.
Artifacts that take many minutes (a trained language model) may name the few modules they
depend on instead, so that an edit elsewhere in the library keeps them.

The cache lives in ``$STAGEWISE_CACHE`` (the Makefile points it at ``_build/cache``), else in
``~/.cache/stagewise``.  Files are written atomically, so an interrupted run never leaves a
half-written artifact behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

CACHE_ENV = "STAGEWISE_CACHE"
T = TypeVar("T")


def cache_dir() -> Path:
    """The directory that holds cached artifacts (created on first use)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stagewise"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


@lru_cache(maxsize=None)
def source_fingerprint(modules: tuple[str, ...] | None = None) -> str:
    """SHA-256 over the library's Python sources, so code changes invalidate the cache.

    ``modules`` restricts it to those files, as paths relative to the package
    (``("lm/training.py",)``); ``None`` means every module.
    """
    digest = hashlib.sha256()
    package = Path(__file__).parent
    paths = sorted(package.rglob("*.py")) if modules is None else [package / m for m in sorted(modules)]
    for path in paths:
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def artifact_key(name: str, config: Mapping[str, Any], modules: tuple[str, ...] | None = None) -> str:
    """Key of an artifact: its name, its configuration and the fingerprint of ``modules``
    (the whole library when ``None``)."""
    payload = json.dumps(
        {"name": name, "config": config, "source": source_fingerprint(modules)},
        sort_keys=True,
        default=str,
    )
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def cached(name: str, config: Mapping[str, Any], compute: Callable[[], T],
           modules: tuple[str, ...] | None = None) -> T:
    """Return ``compute()``, loading it from the cache when the same ``(name, config)`` was
    computed before by the same library source (of ``modules``, or all of it).

    ``compute`` must return a picklable object (arrays, tensors, dicts, dataclasses).
    """
    path = cache_dir() / f"{artifact_key(name, config, modules)}.pkl"
    if path.exists():
        with path.open("rb") as handle:
            return pickle.load(handle)
    result = compute()
    _atomic_write(path, pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    return result
