"""requirements.lock: exact pins, installed as pinned, complete, admitted by pyproject.toml.

A fresh install must reproduce dvc.lock, and saved model folders record package versions (a
transformers config.json writes "transformers_version", diffusers writes "_diffusers_version"), so
an unpinned upgrade changes their md5. scripts/setup.sh installs the lock; scripts/lock.sh refreshes it.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
INSTALL = "run `bash scripts/setup.sh` to install the lock"
REFRESH = "refresh the lock with `bash scripts/lock.sh` (see its --help)"
# Version fields that saved model folders carry, and the package each one records.
RECORDED_VERSIONS = {"transformers_version": "transformers", "_diffusers_version": "diffusers"}


def _pins() -> dict[str, tuple[str, str]]:
    """canonical name -> (name as written, version) for every line of the lock."""
    pins: dict[str, tuple[str, str]] = {}
    bad = []
    for number, raw in enumerate(LOCK.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        try:
            Version(version)
            exact = bool(sep and name) and not any(c in line for c in " ;@<>!~[,*")
        except InvalidVersion:
            exact = False
        if not exact:
            bad.append(f"line {number}: {raw!r} is not an exact 'name==version' pin")
            continue
        key = canonicalize_name(name)
        if key in pins:
            bad.append(f"line {number}: {name} is pinned twice")
        pins[key] = (name, version)
    assert not bad, f"{LOCK.name}:\n  " + "\n  ".join(bad)
    return pins


def _project_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return [r for r in map(Requirement, reqs) if r.marker is None or r.marker.evaluate({"extra": ""})]


@functools.cache
def _installed() -> dict[str, tuple[str, tuple[str, ...]]]:
    """canonical name -> (version, Requires-Dist lines) of each installed distribution."""
    dists: dict[str, tuple[str, tuple[str, ...]]] = {}
    for dist in md.distributions():
        meta = dist.metadata  # parsed on every access: read it once
        name = meta["Name"]
        if name:  # first on sys.path wins, as for imports
            dists.setdefault(canonicalize_name(name), (meta["Version"], tuple(meta.get_all("Requires-Dist") or ())))
    return dists


def test_lock_pins_every_project_requirement_exactly():
    pins = _pins()
    assert "groundiff" not in pins, "groundiff itself is installed editable by setup.sh, not from the lock"
    assert pins.get("torch", (None, None))[1] == "2.14.1", "the lock must pin torch==2.14.1 (the local build)"
    assert pins.get("torchvision", (None, None))[1] == "0.29.1", "the lock must pin torchvision==0.29.1"
    for tool in ("pip", "setuptools", "pytest"):
        assert tool in pins, f"{tool} is part of the environment and must be pinned; {REFRESH}"


def _unlocked(req: Requirement, pins: dict) -> str | None:
    """What is wrong with `req` against the lock: not locked, or the locked version not admitted."""
    key = canonicalize_name(req.name)
    if key not in pins:
        return f"is not in {LOCK.name}"
    if not req.specifier.contains(pins[key][1], prereleases=True):
        return f"does not admit the locked {pins[key][0]}=={pins[key][1]}"
    return None


def test_pyproject_ranges_admit_the_locked_versions():
    pins = _pins()
    problems = []
    for req in _project_requirements():
        problem = _unlocked(req, pins)
        if problem:
            problems.append(f"{req} (pyproject.toml) {problem}")
    assert not problems, "\n".join(problems) + f"\n{REFRESH}"


def test_installed_versions_are_the_locked_ones():
    installed = _installed()
    wrong = []
    for key, (name, version) in sorted(_pins().items()):
        if key not in installed:
            wrong.append(f"{name}=={version} is locked but not installed")
        elif Version(installed[key][0]) != Version(version):
            wrong.append(f"{name}: {installed[key][0]} installed, {version} locked")
    assert not wrong, "\n".join(wrong) + f"\n{INSTALL}, or {REFRESH} if the upgrade is deliberate"


def test_lock_is_complete():
    """Each locked package's own requirements are locked too, at admitted versions: setup.sh installs
    the lock with --no-deps, so a missing one would be absent (or unpinned), not pulled in."""
    pins = _pins()
    installed = _installed()
    problems = []
    for key, (name, version) in sorted(pins.items()):
        if key not in installed or Version(installed[key][0]) != Version(version):
            continue  # reported by test_installed_versions_are_the_locked_ones
        for text in installed[key][1]:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            problem = _unlocked(req, pins)
            if problem:
                problems.append(f"{name} requires {req}, which {problem}")
    assert not problems, "\n".join(problems) + f"\n{REFRESH}"


def _saved_model_jsons():
    """JSON files of the saved model folders present in the checkout (git-tracked worlds, pulled models)."""
    for top in ("worlds", "models"):
        for path in sorted((ROOT / top).rglob("*.json")):
            parts = path.relative_to(ROOT).parts
            if any(p == "state" or p.endswith(("_state", ".partial")) for p in parts):
                continue  # unfinished training state, not a shipped output
            if path.stat().st_size < 1_000_000:
                yield path


def test_saved_models_record_the_locked_versions():
    """A shipped model folder that records a package version records the locked one: upgrading
    transformers or diffusers is deliberate (re-lock) and comes with regenerated outputs."""
    pins = _pins()
    wrong = []
    for path in _saved_model_jsons():
        text = path.read_text(errors="replace")
        if not any(f'"{field}"' in text for field in RECORDED_VERSIONS):
            continue
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(data, dict):
            continue
        for field, package in RECORDED_VERSIONS.items():
            if field in data and package in pins and data[field] != pins[package][1]:
                wrong.append(f"{path.relative_to(ROOT)}: {field} {data[field]}, {LOCK.name} {pins[package][1]}")
    if wrong:
        pytest.fail(
            "saved model folders were written with other package versions than the lock pins:\n"
            + "\n".join(wrong)
            + "\nre-run the stages that write them with the locked environment (dvc repro), or revert the lock"
        )
