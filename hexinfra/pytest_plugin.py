"""hexinfra's pytest plugin entry point: loads ``testing.pytest_plugin``, or says why not.

hexinfra's import names are its top-level packages (``ports``, ``adapters``,
``domain_errors``, ``testing``). A project with a package of one of these names on
its own path shadows ours; this module, in a package named after the distribution,
checks that each name resolves to hexinfra's before loading the fixtures, and
otherwise stops pytest with an error naming the package, where it was found, and what
to do.
"""

from __future__ import annotations

import importlib.util

import pytest

__all__ = ["IMPORT_NAMES", "check_import_names"]

# Each import name, with a module only hexinfra's package of that name has.
IMPORT_NAMES = {
    "ports": "ports.events",
    "adapters": "adapters.bootstrap",
    "domain_errors": "domain_errors.codes",
    "testing": "testing.pytest_plugin",
}


def check_import_names() -> None:
    """``pytest.UsageError`` when one of hexinfra's import names resolves to a package
    that is not hexinfra's (it lacks the module hexinfra's has)."""
    for name, marker in IMPORT_NAMES.items():
        try:
            found = importlib.util.find_spec(marker) is not None
        except ImportError:  # the shadowing name is a module, not a package
            found = False
        if found:
            continue
        spec = importlib.util.find_spec(name)
        where = spec.origin if spec is not None and spec.origin else "a namespace package"
        raise pytest.UsageError(
            f"hexinfra's pytest plugin cannot load: the import name {name!r} is {where}, "
            f"not hexinfra's (it has no {marker!r}). A package or module of your own "
            f"named {name!r} shadows hexinfra's: rename it, or run pytest with "
            "'-p no:hexinfra' if you use none of hexinfra's fixtures."
        )


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """Explain a collection error that hexinfra's import names cause: a project whose
    own package (say ``testing``) comes onto ``sys.path`` only when its tests are
    collected finds hexinfra's package of that name already imported."""
    if not report.failed:
        return
    text = str(report.longrepr)
    for name in IMPORT_NAMES:
        if f"No module named '{name}." in text or f"from '{name}' (" in text:
            spec = importlib.util.find_spec(name)
            ours = spec.origin if spec is not None and spec.origin else name
            report.sections.append(
                (
                    "hexinfra",
                    f"{name!r} is one of hexinfra's import names, already imported from "
                    f"{ours}: a package of your own named {name!r} is shadowed by it. "
                    "Rename yours, or run pytest with '-p no:hexinfra' if you use none "
                    "of hexinfra's fixtures.",
                )
            )
            return


check_import_names()
pytest_plugins = ["testing.pytest_plugin"]
