"""devpid: a Twisted PyPI caching proxy and private package index daemon."""

__version__ = "0.1.0"
