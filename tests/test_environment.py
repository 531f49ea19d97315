"""The virtual environment is exactly requirements.lock, and the lock honours pyproject.toml.

pyproject.toml holds the loose, human-edited requirements; `make lock` resolves them into
requirements.lock (every distribution pinned, with hashes); `make` installs the lock.
"""
from __future__ import annotations

import importlib.metadata
import re
import tomllib

from packaging.requirements import Requirement

from tests.conftest import REPO

LOCK = REPO / "requirements.lock"
PROJECT = "yolact-pipeline"
# Put into every venv by `python -m venv` itself: compared only when the lock pins them.
BOOTSTRAP = {"pip", "setuptools", "wheel"}
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)")


def normalize(name: str) -> str:
    """PEP 503 name: `Flask`, `zc.lockfile`, `typing_extensions` -> `flask`, `zc-lockfile`, `typing-extensions`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(text: str) -> dict[str, str]:
    """Normalized name -> version of every `name==version` line of a lock file."""
    return {normalize(m["name"]): m["version"] for m in map(PIN.match, text.splitlines()) if m}


def installed_distributions() -> dict[str, str]:
    """Normalized name -> version of every distribution importlib.metadata sees."""
    return {normalize(dist.metadata["Name"]): dist.version for dist in importlib.metadata.distributions()}


def lock_mismatches(installed: dict[str, str], pins: dict[str, str]) -> list[str]:
    """One line per distribution where the environment and the lock disagree, sorted by name."""
    problems = []
    for name in sorted(installed.keys() | pins.keys()):
        have, want = installed.get(name), pins.get(name)
        if name == PROJECT or (name in BOOTSTRAP and want is None) or have == want:
            continue
        if want is None:
            problems.append(f"{name}=={have} is installed but not in {LOCK.name}")
        elif have is None:
            problems.append(f"{name}=={want} is in {LOCK.name} but not installed")
        else:
            problems.append(f"{name}=={have} is installed, {LOCK.name} pins {want}")
    return problems


def test_lock_pins_are_parsed_from_pip_compile_output():
    text = "\n".join([
        "# via pip-compile",
        "zc-lockfile==4.0 \\",
        "    --hash=sha256:0123",
        "    # via dvc",
        "Flask==3.1.3 ; python_version >= '3.10'",
        "torch==2.14.1",
    ])
    assert lock_pins(text) == {"zc-lockfile": "4.0", "flask": "3.1.3", "torch": "2.14.1"}


def test_mismatches_name_every_difference_and_skip_the_project_and_unlocked_bootstrap():
    installed = {"numpy": "2.0", "pandas": "3.1.1", "extra": "1.0", "pip": "23.2.1", "setuptools": "80.0",
                 PROJECT: "0.1.0"}
    pins = {"numpy": "2.1", "pandas": "3.1.1", "setuptools": "84.2.1", "missing": "2.0"}
    assert lock_mismatches(installed, pins) == [
        "extra==1.0 is installed but not in requirements.lock",
        "missing==2.0 is in requirements.lock but not installed",
        "numpy==2.0 is installed, requirements.lock pins 2.1",
        "setuptools==80.0 is installed, requirements.lock pins 84.2.1",
    ]


def test_environment_matches_the_lock():
    problems = lock_mismatches(installed_distributions(), lock_pins(LOCK.read_text()))
    assert not problems, (
        "the environment differs from the lock (a stale .venv: `make clean-venv test`; "
        "a new dependency: add it to pyproject.toml, then `make lock`):\n" + "\n".join(problems))


def test_lock_pins_the_contract_torch():
    pins = lock_pins(LOCK.read_text())
    assert (pins.get("torch"), pins.get("torchvision")) == ("2.14.1", "0.29.1")


def test_lock_satisfies_every_pyproject_requirement():
    pins = lock_pins(LOCK.read_text())
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    unmet = []
    for requirement in map(Requirement, dependencies):
        version = pins.get(normalize(requirement.name))
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement} (lock: {version})")
    assert not unmet, "pyproject.toml changed since the lock was made, run `make lock`: " + ", ".join(unmet)
