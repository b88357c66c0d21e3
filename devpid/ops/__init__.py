"""Operations: /+status, /+metrics, gen-config and fsck; read-only over the other areas.

- ``requests``: what the site records of each request (routes, codes, latency)
- ``window``: the last minute of latencies, in bounded memory
- ``health``: the verdict: can this process serve, and what degrades it
- ``snapshot``: the state of this process, read once per ``/+status`` or ``/+metrics``
- ``status``: a snapshot as the ``/+status`` JSON document
- ``metrics``: a snapshot (and the requests) as Prometheus families
- ``genconfig``: nginx, supervisord, systemd, pip and uv files for an installation
- ``fsck``: checking (and repairing) the cached files against their pages

The command lines of gen-config and fsck are in devpid.cli.
"""
