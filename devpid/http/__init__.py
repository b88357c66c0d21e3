"""The HTTP layer: the site with its limits and access log, the Klein app that mounts the route modules, the listening endpoints."""
