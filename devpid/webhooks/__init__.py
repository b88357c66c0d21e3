"""Webhooks: the stage events of the private data's event log, POSTed to each index's URLs.

``events`` says which logged events are webhook events and what their JSON is,
``signing`` signs a body with the index's ``webhook_secret``, ``queue`` is the
durable queue in ``webhooks.sqlite``, ``delivery`` sends one POST, and
``service`` fills the queue from the event log and drains it.
"""
