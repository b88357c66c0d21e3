"""Replicas: read-only devpids on other machines that follow a primary's event log.

The primary answers ``/+replica/events`` (a long poll of its events after a
serial), ``/+replica/snapshot`` (every record and event at one serial) and
``/+replica/files/<path>`` (a stage's file), each signed with the shared
replication secret. A replica (``--primary-url``) applies the events in order
with the primary's serials, fetches the files they link through the streaming
tee, serves reads, and refuses writes.

One job a module:

- ``secret``: the shared secret, and the signature of each request made with it
- ``wire``: the feed's and the snapshot's lines, written and checked
- ``feed``: the primary's side: waiting for events, dumping a snapshot
- ``client``: the replica's requests to the primary
- ``follower``: the replica's loop: long-poll, apply, resync, back off
- ``files``: the replica's copies of the stage files: fetched, removed, streamed on a miss
- ``state``: where the replica stands (for ``/+status``), shared between workers; the lease
- ``readonly``: the refusal of writes sent to a replica
- ``setup``: a replica's parts built for ``tap``
"""
