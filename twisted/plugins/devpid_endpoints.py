"""The ``reuseport:`` endpoint for ``--listen`` (see devpid/endpoints.py)."""

from devpid.http.endpoints import ReusePortParser

reuseport = ReusePortParser()
