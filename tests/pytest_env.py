"""Loaded before Django (pytest.ini `-p`): a test run is a development environment,
so settings do not demand a production SECRET_KEY; subprocesses inherit this."""

import os

os.environ.setdefault("DEBUG", "True")
