"""The import contract (pyproject.toml ``[tool.importlinter]``), enforced in the suite.

Layers import downward only (schemas <- bus <- workers), and the pure modules
(quorum math, ballot rules, judge, verdict state, chain building, policy,
key lifecycle, baselines, Byzantine rules, staleness) import no nats, no
asyncio, no OpenTelemetry and nothing from bus, directly or through another
module. The checks run ``lint-imports`` (import-linter) on the real tree, and
on a copy with one violation planted, so the test proves it can fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "bus", "workers")


def contract() -> dict[str, object]:
    config: dict[str, object] = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"][
        "importlinter"
    ]
    return config


def pure_modules() -> list[str]:
    contracts = contract()["contracts"]
    assert isinstance(contracts, list)
    (forbidden,) = [c for c in contracts if c["type"] == "forbidden"]
    return [m for m in forbidden["source_modules"] if m != "schemas"]


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(no_cache=True))"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def planted(tmp_path: Path, module: str, line: str) -> Path:
    """A copy of the three packages with ``line`` added to ``module``."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / (module.replace(".", "/") + ".py")
    path.write_text(path.read_text() + f"\n{line}\n")
    return tmp_path


def test_the_tree_keeps_the_contract() -> None:
    proc = lint_imports(ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


def test_every_pure_module_exists() -> None:
    for module in pure_modules():
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module
    assert "schemas.quorum" not in pure_modules()  # covered: all of schemas is pure
    assert (ROOT / "schemas" / "quorum.py").is_file()


@pytest.mark.parametrize(
    ("module", "line", "expect"),
    [
        ("workers.anomaly.baseline", "import nats", "not allowed to import nats"),
        ("workers.consensus.judge", "import asyncio", "not allowed to import asyncio"),
        ("schemas.quorum", "from bus import subjects", "schemas is not allowed to import bus"),
        ("workers.trust.chain", "from bus.subjects import Subjects", "not allowed to import bus"),
        # indirect: a pure module that imports a worker process drags nats in
        ("workers.authority.policy", "import workers.keys.worker", "not allowed to import nats"),
        ("bus.subjects", "import workers.consensus.tally", "bus is not allowed to import workers"),
    ],
)
def test_a_planted_violation_fails(tmp_path: Path, module: str, line: str, expect: str) -> None:
    proc = lint_imports(planted(tmp_path, module, line))
    assert proc.returncode != 0
    assert expect in proc.stdout, proc.stdout
