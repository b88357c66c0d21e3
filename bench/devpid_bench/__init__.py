"""Helpers for ``bench/run.py``: the devpid vs devpi-server benchmark."""
