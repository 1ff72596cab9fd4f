"""hexinfra's distribution package: its version and its pytest plugin entry point.

The library itself lives in the top-level packages ``ports``, ``adapters``,
``domain_errors`` and ``testing`` (see the README's "Import names").
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("hexinfra")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0+unknown"
