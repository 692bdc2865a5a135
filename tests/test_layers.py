"""The domain library (everything of ``stagewise`` outside ``stagewise.book``) never reaches the
book's plumbing: neither by a static import anywhere in its files (function bodies included)
nor at run time."""

import subprocess
import sys
from pathlib import Path

import pytest

import stagewise
from stagewise.book.cache import dependency_scope

PACKAGE = Path(stagewise.__file__).resolve().parent
DOMAIN = sorted(p for p in PACKAGE.rglob("*.py")
                if p.relative_to(PACKAGE).parts[0] != "book" and p.name != "__main__.py")


def _dotted(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_domain_modules_are_found():
    names = {_dotted(p) for p in DOMAIN}
    assert {"stagewise.sampling", "stagewise.groups", "stagewise.theory", "stagewise.stages",
            "stagewise.toy.retraining", "stagewise.lm.training"} <= names
    assert not any(name.startswith("stagewise.book") for name in names)


@pytest.mark.parametrize("module", DOMAIN, ids=_dotted)
def test_no_domain_module_imports_the_book_transitively(module):
    reached = [name for name in dependency_scope(module) if name.startswith("book/")]
    assert not reached, f"{_dotted(module)} reaches {reached}"


def test_importing_the_whole_domain_loads_nothing_of_the_book():
    names = [_dotted(p) for p in DOMAIN]
    script = ("import importlib, sys\n"
              f"for name in {names!r}:\n    importlib.import_module(name)\n"
              "print(sorted(m for m in sys.modules if m.startswith('stagewise.book')))")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout

