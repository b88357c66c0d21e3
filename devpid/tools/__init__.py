"""The tools that work on a devpid from outside its process: ``devpid warm`` fills a
running devpid's cache over HTTP; ``devpid export`` and ``import`` write and load bundles
(``devpid.tools.bundle``), also from a devpi-server export (``devpid.tools.devpi_export``)."""
