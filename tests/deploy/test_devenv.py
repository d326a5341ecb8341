"""Development works with no set-up (a generated, git-ignored .env); production is explicit."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..support import ROOT

# What a newcomer's shell has: none of the project's settings.
CLEAN_ENV = {
    k: v
    for k, v in os.environ.items()
    if k not in {"DEBUG", "SECRET_KEY", "DJANGO_SETTINGS_MODULE", "DATABASE_URL"}
}


def fresh_checkout(tmp_path: Path) -> Path:
    """The tracked files of this repository, as a fresh clone has them, and our venv."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    checkout = tmp_path / "checkout"
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    (checkout / ".venv").symlink_to(Path(sys.prefix))
    return checkout


def manage(checkout: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run manage.py in `checkout` the way a newcomer types it."""
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=checkout,
        env={**CLEAN_ENV, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_fresh_checkout_runs_manage_py_after_make_setup(tmp_path):
    """After make's set-up step, manage.py check runs with no extra variables."""
    checkout = fresh_checkout(tmp_path)
    assert manage(checkout, "check").returncode != 0  # before: nothing configured
    subprocess.run(["make", "-s", ".env"], cwd=checkout, check=True, env=CLEAN_ENV)
    dotenv = (checkout / ".env").read_text()
    assert "DEBUG=True" in dotenv.splitlines()
    [key_line] = [
        line for line in dotenv.splitlines() if line.startswith("SECRET_KEY=")
    ]
    assert len(key_line.removeprefix("SECRET_KEY=")) >= 50
    result = manage(checkout, "check")
    assert result.returncode == 0, result.stderr
    # Run again, make leaves the file (and its key) alone.
    subprocess.run(["make", "-s", ".env"], cwd=checkout, check=True, env=CLEAN_ENV)
    assert (checkout / ".env").read_text() == dotenv


def test_generated_keys_differ_and_are_never_committed(tmp_path):
    """Each checkout gets its own key, and git ignores the file that holds it."""
    from chatproj.devenv import write_dev_env

    first, second = tmp_path / "a.env", tmp_path / "b.env"
    assert write_dev_env(first) and write_dev_env(second)
    assert not write_dev_env(first)  # never overwritten
    assert first.read_text() != second.read_text()
    assert first.stat().st_mode & 0o077 == 0  # readable by its owner only
    ignored = subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT)
    assert ignored.returncode == 0


def test_debug_off_without_secret_key_refuses_to_start(tmp_path):
    """A DEBUG=False deployment without SECRET_KEY fails, saying what to set."""
    checkout = fresh_checkout(tmp_path)
    subprocess.run(["make", "-s", ".env"], cwd=checkout, check=True, env=CLEAN_ENV)
    # The environment wins over .env: production's DEBUG=False and empty key.
    result = manage(checkout, "check", DEBUG="False", SECRET_KEY="")
    assert result.returncode != 0
    assert "SECRET_KEY is not set and DEBUG is off" in result.stderr
    result = manage(checkout, "check", DEBUG="False", SECRET_KEY="x" * 50)
    assert result.returncode == 0, result.stderr
