"""The pytest plugin's entry point names a package that shadows hexinfra's."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from types import SimpleNamespace
from typing import Any

import pytest

from hexinfra import pytest_plugin


def _shadow(monkeypatch: pytest.MonkeyPatch, name: str, origin: str) -> None:
    """Make ``name`` resolve to a package at ``origin`` that lacks hexinfra's modules."""
    real = importlib.util.find_spec

    def find_spec(fullname: str, *args: Any) -> importlib.machinery.ModuleSpec | None:
        if fullname == name:
            return importlib.machinery.ModuleSpec(name, None, origin=origin)
        if fullname.startswith(name + "."):
            return None
        return real(fullname, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_hexinfras_own_packages_pass() -> None:
    """In this repository every import name is hexinfra's: no error."""
    pytest_plugin.check_import_names()


@pytest.mark.parametrize("name", sorted(pytest_plugin.IMPORT_NAMES))
def test_a_shadowing_package_is_named_with_what_to_do(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """A package of the user's own with one of the import names stops pytest with an
    error naming the package, where it is, and the way out."""
    _shadow(monkeypatch, name, f"/project/{name}/__init__.py")
    with pytest.raises(pytest.UsageError) as err:
        pytest_plugin.check_import_names()
    text = str(err.value)
    assert f"the import name {name!r} is /project/{name}/__init__.py" in text
    assert "-p no:hexinfra" in text


def test_a_module_that_shadows_a_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain module named like one of hexinfra's packages (find_spec of its
    submodule raises) is reported too."""
    real = importlib.util.find_spec

    def find_spec(fullname: str, *args: Any) -> importlib.machinery.ModuleSpec | None:
        if fullname == "ports.events":
            raise ModuleNotFoundError("ports is not a package")
        if fullname == "ports":
            return importlib.machinery.ModuleSpec("ports", None, origin="/project/ports.py")
        return real(fullname, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(pytest.UsageError, match=r"'ports' is /project/ports.py"):
        pytest_plugin.check_import_names()


def _report(text: str, *, failed: bool = True) -> Any:
    return SimpleNamespace(failed=failed, longrepr=text, sections=[])


def test_a_collection_error_from_a_shadowed_name_gets_the_hint() -> None:
    """``No module named 'testing.helpers'`` at collection carries hexinfra's hint."""
    report = _report("E   ModuleNotFoundError: No module named 'testing.helpers'")
    pytest_plugin.pytest_collectreport(report)
    [(title, hint)] = report.sections
    assert title == "hexinfra"
    assert "'testing' is one of hexinfra's import names" in hint


def test_other_collection_reports_are_left_alone() -> None:
    """Passing reports and unrelated errors get no hint."""
    passed = _report("No module named 'testing.helpers'", failed=False)
    other = _report("E   ModuleNotFoundError: No module named 'requests'")
    for report in (passed, other):
        pytest_plugin.pytest_collectreport(report)
        assert report.sections == []
