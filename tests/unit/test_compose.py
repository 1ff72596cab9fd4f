"""compose.yml: every health check runs a command that its image actually ships."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yml"

# What each image family ships, from its Dockerfile: the official postgres images are
# Debian (or Alpine) with the PostgreSQL client tools; nats:<v>-alpine is Alpine with
# busybox; nats:<v> without a suffix is FROM scratch: nats-server and nothing else.
_COMMANDS: dict[str, frozenset[str]] = {
    "postgres": frozenset({"pg_isready", "psql", "sh", "bash"}),
    "nats-alpine": frozenset({"wget", "sh", "nats-server"}),
    "nats-scratch": frozenset({"nats-server"}),
}


def _family(image: str) -> str:
    name, _, tag = image.partition(":")
    if name == "postgres":
        return "postgres"
    if name == "nats":
        return "nats-alpine" if "alpine" in tag else "nats-scratch"
    raise AssertionError(f"no known command list for image {image!r}")


def _command(test: list[str] | str) -> str:
    if isinstance(test, str):  # a plain string runs in the image's shell
        return "sh"
    kind, *argv = test
    assert kind in ("CMD", "CMD-SHELL"), kind
    return "sh" if kind == "CMD-SHELL" else argv[0]


def _services() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return services


def test_every_service_has_a_health_check() -> None:
    """Both servers declare a health check (tests and depends_on can wait on it)."""
    assert {name for name, s in _services().items() if "healthcheck" in s} == {
        "postgres",
        "nats",
    }


def test_each_health_check_command_exists_in_its_image() -> None:
    """The program each health check runs is one its image family ships."""
    for name, service in _services().items():
        command = _command(service["healthcheck"]["test"])
        assert command in _COMMANDS[_family(service["image"])], (name, command)


def test_the_scratch_nats_image_would_be_refused() -> None:
    """The check knows the plain nats:2 image has no wget (the 0.1.0 mistake)."""
    assert "wget" not in _COMMANDS[_family("nats:2")]


def test_nats_health_check_asks_for_jetstream() -> None:
    """NATS reports healthy only once JetStream is enabled, on the monitoring port it
    is started with."""
    nats = _services()["nats"]
    assert "-js" in nats["command"]
    assert "-m" in nats["command"]
    port = nats["command"][nats["command"].index("-m") + 1]
    assert f"127.0.0.1:{port}/healthz?js-enabled-only=true" in nats["healthcheck"]["test"][-1]
