"""Private data: users, indexes, their configuration, the event log."""
