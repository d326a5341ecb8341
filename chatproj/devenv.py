"""Write the development `.env` (DEBUG=True, a fresh SECRET_KEY) when there is none.

`make run` and `make test` call this first, so `manage.py` works in a fresh checkout
with no set-up, as in Django's own project template. The file is git-ignored and never
committed; production never reads it (the Docker image excludes it and docker compose
sets DEBUG=False and requires its own SECRET_KEY).
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

TEMPLATE = """\
# Development settings, written by `make` because there was no .env (git-ignored:
# never commit it). Production sets DEBUG=False and its own SECRET_KEY instead;
# .env.example lists every setting.
DEBUG=True
SECRET_KEY={secret_key}
"""


def write_dev_env(path: Path) -> bool:
    """Create `path` with DEBUG=True and a new random SECRET_KEY; False if it exists."""
    try:
        with path.open("x", encoding="utf-8") as env_file:
            env_file.write(TEMPLATE.format(secret_key=secrets.token_urlsafe(50)))
    except FileExistsError:
        return False
    path.chmod(0o600)
    return True


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".env")
    if write_dev_env(target):
        print(f"Wrote {target}: DEBUG=True and a fresh SECRET_KEY for development.")
