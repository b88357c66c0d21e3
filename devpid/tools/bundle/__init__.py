"""Bundles: a serverdir's private data, private files and (some of) its mirror cache, with
every file's sha256, as a directory or one ``.tar`` (docs/bundle-format.md).

- ``format``: the names, the header, the manifest, which paths a bundle may hold
- ``export`` side (``devpid export``) and ``import`` side (``devpid import``) build on it.
"""
