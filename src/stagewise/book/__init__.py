"""The book's boundary: what the chapters call.

The domain modules (:mod:`stagewise.sampling`, :mod:`stagewise.influence`, :mod:`stagewise.toy`,
:mod:`stagewise.lm`, …) compute and never touch a cache or a profile.  The modules of this
package wrap them for the chapters: they read the sizes of the chosen profile
(:mod:`stagewise.book.profiles`), the device (``$STAGEWISE_DEVICE``) and cache the expensive
results (:mod:`stagewise.book.cache`), so a rebuilt chapter reuses what it computed before.  A
researcher calling the library directly never writes to a cache behind their back.  Importing
this package sends the domain's progress bars where :mod:`stagewise.book.progress` says.

Nothing in the domain imports this package (``tests/test_layers.py`` checks every domain
module's transitive imports).
"""

from __future__ import annotations

import os

import torch

from stagewise._progress import set_progress_factory
from stagewise.book.progress import progress

set_progress_factory(progress)

DEVICE_ENV = "STAGEWISE_DEVICE"


def valid_devices() -> list[str]:
    """Devices this machine can run the book on: ``cpu``, and ``cuda``, ``cuda:0`` … when present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{k}" for k in range(torch.cuda.device_count()))]
    return devices


def book_device(name: str | None = None) -> torch.device:
    """The device the chapters compute on: ``name``, else ``$STAGEWISE_DEVICE``, else the CPU.

    An unknown or absent device raises ``ValueError`` listing the valid ones.
    """
    name = (name or os.environ.get(DEVICE_ENV, "").strip() or "cpu").lower()
    valid = valid_devices()
    if name not in valid:
        raise ValueError(f"unknown or unavailable device {name!r} (from {DEVICE_ENV} or the argument); "
                         f"valid devices here are: {', '.join(valid)}")
    return torch.device(name)
