"""The release this code is: the installed distribution's version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("jobapi")
except PackageNotFoundError:  # pragma: no cover - imported from a checkout that was never installed
    __version__ = "0.0.0"
