"""Tell twistd that ``devpid`` exists; nothing is imported until it runs."""

from twisted.application.service import ServiceMaker

devpid = ServiceMaker(
    "devpid",
    "devpid.tap",
    "A PyPI caching proxy and private package index.",
    "devpid",
)
