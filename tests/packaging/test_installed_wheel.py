"""hexinfra as a user gets it: the wheel installed with its extras into a fresh
virtualenv, a throwaway project outside the repository running the events and
database contract suites with plain ``pytest`` and no configuration, and a project
whose own ``testing`` package shadows ours getting an error that says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
USER_TESTS = Path(__file__).with_name("user_project") / "test_contracts.py.txt"


def _run(*argv: str | Path, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.pop("COVERAGE_PROCESS_START", None)
    return subprocess.run(
        [str(a) for a in argv],
        check=False,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "-q", "-w", out, ROOT, cwd=out,
    )  # fmt: skip
    assert built.returncode == 0, built.stderr
    [path] = out.glob("hexinfra-*.whl")
    return path


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("venv")
    made = _run(sys.executable, "-m", "venv", home, cwd=home)
    assert made.returncode == 0, made.stderr
    python = home / "bin" / "python"
    installed = _run(
        python, "-m", "pip", "install", "-q", "--disable-pip-version-check",
        f"{wheel}[all]", cwd=home,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stderr[-2000:]
    yield python
    shutil.rmtree(home, ignore_errors=True)


def test_the_wheel_carries_license_typing_and_the_plugin(wheel: Path) -> None:
    """The wheel ships the LICENSE, py.typed markers, project URLs and the pytest11
    entry point of the plugin."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        meta = archive.read(next(n for n in names if n.endswith("dist-info/METADATA"))).decode()
        entry = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert any(n.endswith("licenses/LICENSE") for n in names)
    for package in ("ports", "adapters", "domain_errors", "testing", "hexinfra"):
        assert f"{package}/py.typed" in names
    assert "Project-URL: Repository," in meta
    assert "Provides-Extra: postgres" in meta
    assert "hexinfra = hexinfra.pytest_plugin" in entry
    assert "](docs/" not in meta  # README links work on the package index
    assert "](examples/" not in meta


def test_contract_suites_run_in_a_users_project(venv: Path, tmp_path: Path) -> None:
    """A project outside the repository, with no pytest configuration, runs the events
    and database contract suites (in-memory, SQLite, NATS and PostgreSQL) and passes."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(USER_TESTS, project / "test_contracts.py")
    ran = _run(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-2000:]
    assert " passed" in ran.stdout
    assert " failed" not in ran.stdout


def test_a_shadowing_package_gets_an_error_that_says_so(venv: Path, tmp_path: Path) -> None:
    """A user's own top-level ``testing`` package stops the plugin with an error naming
    the package, where it is and what to do; ``-p no:hexinfra`` gets past it."""
    project = tmp_path / "shadowed"
    (project / "testing").mkdir(parents=True)
    (project / "testing" / "__init__.py").write_text("")
    (project / "test_x.py").write_text("def test_x() -> None:\n    assert True\n")
    ran = _run(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", cwd=project)
    assert ran.returncode != 0
    output = ran.stdout + ran.stderr
    assert "the import name 'testing' is" in output
    assert str(project / "testing") in output
    assert "-p no:hexinfra" in output
    skipped = _run(
        venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:hexinfra", cwd=project
    )
    assert skipped.returncode == 0, skipped.stdout


def test_a_shadowed_package_found_at_collection_gets_a_hint(venv: Path, tmp_path: Path) -> None:
    """The common layout (a root conftest, plain ``pytest``): the user's ``testing``
    package comes onto sys.path only at collection, finds ours imported, and the
    collection error carries hexinfra's explanation."""
    project = tmp_path / "layout"
    (project / "testing").mkdir(parents=True)
    (project / "testing" / "__init__.py").write_text("")
    (project / "testing" / "helpers.py").write_text("VALUE = 1\n")
    (project / "conftest.py").write_text("")
    (project / "test_y.py").write_text(
        "from testing.helpers import VALUE\n\ndef test_y() -> None:\n    assert VALUE == 1\n"
    )
    ran = _run(venv.with_name("pytest"), "-q", "-p", "no:cacheprovider", cwd=project)
    assert ran.returncode != 0
    assert "one of hexinfra's import names" in ran.stdout, ran.stdout[-3000:]
    assert "-p no:hexinfra" in ran.stdout
