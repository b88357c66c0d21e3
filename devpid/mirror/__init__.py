"""Mirror indexes.

The upstream client, the mirror index (freshness, stale marks, offline), the changelog
poller and the download tee.
"""
