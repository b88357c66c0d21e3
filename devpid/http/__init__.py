"""The HTTP layer.

- ``app``: the one Klein app, with the route areas of ``devpid.routes`` mounted
- ``errors``: ``HTTPError`` and the one-line error answers of the routes
- ``request``: what the routes read from a request (negotiation, links, ETags)
- ``site``: the site: admission per client, draining on shutdown
- ``limits``: the ``Limits`` and the channel that holds each connection to them
- ``guard``: what the routes never see (bad URLs, methods, hosts, loops)
- ``accesslog``: one line per answer, and the request counts it feeds
- ``endpoints``: ``reuseport:`` listening
"""
