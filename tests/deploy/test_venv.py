"""deploy/venv.sh (`make venv`, run first by every target) links .venv to the cache's venv of the
pinned dependencies, but leaves alone a .venv that already holds those pins elsewhere: re-linking
it changed the environment under a command already running from it (issue #25). Run on a copy of
the three files it reads, with fake finished venvs, so nothing is installed."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = shutil.which("python3") or sys.executable


def checkout(tmp_path: Path) -> Path:
    root = tmp_path / "clone"
    (root / "deploy").mkdir(parents=True)
    for name in ("deploy/venv.sh", "deploy/requirements.py", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    return root


def pins(root: Path) -> str:
    return subprocess.run([PYTHON, "deploy/requirements.py", "dev"], cwd=root, capture_output=True, text=True,
                          check=True).stdout.rstrip("\n")


def fake_venv(where: Path, requirements: str) -> Path:
    """What venv.sh leaves behind when it is done: a python, the pins it installed, .complete."""
    (where / "bin").mkdir(parents=True)
    (where / "bin" / "python").symlink_to(PYTHON)
    (where / "requirements.txt").write_text(requirements + "\n")
    (where / ".complete").touch()
    return where


def cache_store(root: Path, cache: Path) -> Path:
    """The cache's venv for these pins, made finished already, so that venv.sh installs nothing
    whatever it decides."""
    deps = pins(root)
    version = subprocess.run([PYTHON, "-c", "import sys; print(sys.version)"], capture_output=True, text=True,
                             check=True).stdout
    key = hashlib.sha256(f"{deps}\n{version}".encode()).hexdigest()[:16]
    return fake_venv(cache / f"venv-{key}", deps)


def venv_sh(root: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "deploy/venv.sh"], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHON": PYTHON, "RERANK_VENV_CACHE": str(cache)})


def test_a_venv_elsewhere_with_the_same_pins_is_left_alone(tmp_path):
    root = checkout(tmp_path)
    cache_store(root, tmp_path / "cache")
    elsewhere = fake_venv(tmp_path / "other-cache" / "venv-mine", pins(root))
    (root / ".venv").symlink_to(elsewhere)
    done = venv_sh(root, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / ".venv") == str(elsewhere), done.stdout
    assert "left as it is" in done.stdout


def test_a_venv_with_other_pins_is_relinked_to_the_cache(tmp_path):
    root = checkout(tmp_path)
    store = cache_store(root, tmp_path / "cache")
    (root / ".venv").symlink_to(fake_venv(tmp_path / "old", "torch==1.0"))
    done = venv_sh(root, tmp_path / "cache")
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / ".venv") == str(store), done.stdout
