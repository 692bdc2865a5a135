"""A content-addressed cache for expensive results, used at the book's boundary only.

An artifact is stored under a key made of its name, its configuration (any JSON-serialisable
mapping) and a fingerprint of the library source it depends on.  The scope of that fingerprint
is derived from imports: ``depends_on`` names the function (or module) that does the work, and
its module plus every ``stagewise`` module it imports, transitively, are hashed.  Changing a
hyperparameter or a line of that code misses the cache; a prose-only edit of the book, or an
edit of an unrelated module, hits it.

The cache lives in ``$STAGEWISE_CACHE`` (the Makefile points it at ``_build/cache``), else in
``~/.cache/stagewise``.  Domain modules (sampling, influence, toy, lm, …) never import this
module, so a library user's call never writes here behind their back; :mod:`stagewise.book`
wraps them.

Entries are written atomically (a temporary file in the same folder, then ``os.replace``), so
an interrupted run leaves nothing half-written.  A process about to compute an entry holds a
lock on it (``fcntl.flock`` where the system has it), so a second process asking for the same
entry at the same time (two chapters run side by side) waits and then reads it instead of
computing it again.  Each entry carries a SHA-256 of its payload: a truncated or
corrupted entry is detected, reported with a warning, removed and recomputed.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import pickle
import warnings
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from stagewise._files import exclusive_lock, written_atomically

CACHE_ENV = "STAGEWISE_CACHE"
PACKAGE = Path(__file__).resolve().parents[1]
MAGIC = b"stagewise-cache-1\n"
T = TypeVar("T")


def cache_dir() -> Path:
    """The directory that holds cached artifacts (created on first use)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stagewise"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _module_path(dotted: str) -> Path | None:
    """Source file of the ``stagewise`` module ``dotted`` (``None`` outside the package)."""
    parts = dotted.split(".")
    if parts[0] != PACKAGE.name:
        return None
    base = PACKAGE.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _dotted_name(path: Path) -> str:
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def _imported_modules(path: Path) -> set[Path]:
    """The ``stagewise`` modules that the file ``path`` imports explicitly.

    ``from stagewise.toy import x`` counts ``toy/__init__.py`` unless ``x`` is itself a module
    (``from stagewise import theory``).  Parent packages that Python runs implicitly are not
    counted: they do not change what a function in the module computes.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _dotted_name(path) if path.name == "__init__.py" else _dotted_name(path).rpartition(".")[0]
    found: set[Path] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(p for alias in node.names if (p := _module_path(alias.name)))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = _module_path(f"{source}.{alias.name}")
                parent = _module_path(source)
                if submodule is not None:
                    found.add(submodule)
                elif parent is not None:
                    found.add(parent)
    return found


@lru_cache(maxsize=None)
def dependency_scope(module_file: Path) -> tuple[str, ...]:
    """Paths (relative to the package) of ``module_file`` and every ``stagewise`` module it
    imports, transitively, sorted."""
    seen: set[Path] = set()
    stack = [module_file.resolve()]
    while stack:
        path = stack.pop()
        if path in seen:
            continue
        seen.add(path)
        stack.extend(p.resolve() for p in _imported_modules(path) if p.resolve() not in seen)
    return tuple(sorted(str(p.relative_to(PACKAGE.resolve())) for p in seen))


Dependency = Callable | ModuleType | tuple[Callable | ModuleType, ...] | None
"""What a cached result depends on: a function or module of ``stagewise``, several of them, or
``None`` for the whole library."""


def _scope_of(depends_on: Dependency) -> tuple[str, ...] | None:
    if depends_on is None:
        return None
    scope: set[str] = set()
    for target in depends_on if isinstance(depends_on, tuple) else (depends_on,):
        module = target if isinstance(target, ModuleType) else inspect.getmodule(target)
        source = getattr(module, "__file__", None)
        if source is None or not Path(source).resolve().is_relative_to(PACKAGE.resolve()):
            raise ValueError(f"depends_on must name functions or modules of the stagewise package, got {target!r}")
        scope.update(dependency_scope(Path(source).resolve()))
    return tuple(sorted(scope))


@lru_cache(maxsize=None)
def source_fingerprint(modules: tuple[str, ...] | None = None) -> str:
    """SHA-256 over library sources: the files ``modules`` (paths relative to the package, as
    :func:`dependency_scope` gives them), or every module when ``None``."""
    digest = hashlib.sha256()
    paths = sorted(PACKAGE.rglob("*.py")) if modules is None else [PACKAGE / m for m in sorted(modules)]
    for path in paths:
        digest.update(str(path.relative_to(PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def artifact_key(name: str, config: Mapping[str, Any], depends_on: Dependency = None) -> str:
    """Key of an artifact: its name, its configuration and the fingerprint of the code it
    depends on (the import closure of ``depends_on``; the whole library when ``None``)."""
    payload = json.dumps(
        {"name": name, "config": config, "source": source_fingerprint(_scope_of(depends_on))},
        sort_keys=True,
        default=str,
    )
    return f"{name}-{hashlib.sha256(payload.encode()).hexdigest()[:20]}"


def _write_entry(path: Path, value: Any) -> None:
    payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
    with written_atomically(path) as temporary:
        temporary.write_bytes(MAGIC + hashlib.sha256(payload).digest() + payload)


class CorruptEntry(ValueError):
    """A cache file whose checksum does not match its payload (truncated or overwritten)."""


def _read_entry(path: Path) -> Any:
    data = path.read_bytes()
    digest_end = len(MAGIC) + 32
    if not data.startswith(MAGIC) or len(data) < digest_end:
        raise CorruptEntry("not a stagewise cache entry (or truncated header)")
    payload = data[digest_end:]
    if hashlib.sha256(payload).digest() != data[len(MAGIC):digest_end]:
        raise CorruptEntry("checksum mismatch (truncated or corrupted)")
    return pickle.loads(payload)


def cached(name: str, config: Mapping[str, Any], compute: Callable[[], T],
           depends_on: Dependency = None) -> T:
    """Return ``compute()``, loading it from the cache when the same ``(name, config)`` was
    computed before by the same source code.

    ``depends_on`` is the library function (or module, or a tuple of them) that does the work;
    the cache scope is its module and everything in ``stagewise`` that module imports.  ``compute`` must return a
    picklable object.  An unreadable entry is reported with a warning and recomputed.
    """
    path = cache_dir() / f"{artifact_key(name, config, depends_on)}.pkl"
    with exclusive_lock(path.with_suffix(".lock")):
        if path.exists():
            try:
                return _read_entry(path)
            except (CorruptEntry, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as error:
                warnings.warn(f"cache entry {path.name} is unreadable ({error}); recomputing it", stacklevel=2)
                path.unlink(missing_ok=True)
        result = compute()
        _write_entry(path, result)
        return result
