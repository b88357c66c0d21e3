"""``QuietPool``: treq's connection pool without a log line per connection.

Twisted's HTTP client factory logs "Starting factory" for every new connection;
devpid opens many (to the upstream, a primary, webhook receivers), so its pools
use a factory that does not.
"""

from __future__ import annotations

from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory


class _QuietClientFactory(_HTTP11ClientFactory):
    noisy = False


class QuietPool(HTTPConnectionPool):
    _factory = _QuietClientFactory
