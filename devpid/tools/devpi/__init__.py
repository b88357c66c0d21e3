"""Reading a devpi-server export (``devpi-export DIR``) into a devpid bundle.

- ``dataindex``: ``dataindex.json`` read and brought to dump version 2, as devpi's own
  importer does;
- ``accounts``: devpi's users and index configurations as devpid's records;
- ``placing``: the export's files put into the bundle (hard-linked, else copied), each read
  once for its hashes;
- ``releases``: versions and their files (release files, doc zips, tox results, a wheel's
  ``.metadata``) as devpid's version records.

``devpid.tools.devpi_export.convert`` ties them together and writes the bundle.
"""
