"""One set of tested versions: constraints.txt pins what CI and every image install, within pyproject's floors."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ["private_api/Dockerfile", "public_api/Dockerfile", "job_consumer/Dockerfile"]
# Advisory floors: no version below these may be allowed.
FLOORS = {"python-multipart": "0.0.18", "starlette": "0.49.1", "h11": "0.16", "requests": "2.32.4", "urllib3": "2.5"}


def _pins() -> dict[str, Version]:
    """constraints.txt as name -> exact version."""
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    """Every requirement pyproject.toml declares, extras included, without the project's own self-references."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        lines.extend(extra)
    return [r for r in map(Requirement, lines) if canonicalize_name(r.name) != canonicalize_name(project["name"])]


def test_every_requirement_is_pinned_within_its_range() -> None:
    pins = _pins()
    for requirement in _requirements():
        if requirement.marker and not requirement.marker.evaluate():
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in constraints.txt (run `make constraints`)"
        assert requirement.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} not {requirement}"


@pytest.mark.parametrize(("name", "floor"), sorted(FLOORS.items()))
def test_advisory_floors(name: str, floor: str) -> None:
    specs = [r.specifier for r in _requirements() if canonicalize_name(r.name) == name]
    assert specs, f"pyproject.toml sets no floor for {name}"
    for spec in specs:
        lower = [Version(c.version) for c in spec if c.operator in (">=", ">", "==", "~=")]
        assert lower and max(lower) >= Version(floor), f"{name}{spec} allows a version below {floor}"
    assert _pins()[name] >= Version(floor)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_images_install_the_constrained_versions(dockerfile: str) -> None:
    text = (ROOT / dockerfile).read_text()
    assert re.search(r"^COPY .*\bconstraints\.txt\b", text, re.MULTILINE), f"{dockerfile} does not copy constraints.txt"
    for command in re.findall(r"pip install[^\n]*", text):
        assert "-c constraints.txt" in command, f"{dockerfile}: {command}"


def test_ci_installs_the_constrained_versions() -> None:
    makefile = (ROOT / "Makefile").read_text()
    install = makefile.split("$(VENV)/.installed:", 1)[1].split("\n\n", 1)[0]
    assert "constraints.txt" in install.splitlines()[0] and "-c constraints.txt" in install
