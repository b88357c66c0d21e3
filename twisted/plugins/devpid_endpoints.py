"""The ``reuseport:`` endpoint for ``--listen`` (see devpid/endpoints.py)."""

from devpid.endpoints import ReusePortParser

reuseport = ReusePortParser()
