"""One upstream download per file, streamed to every waiting client while it is written and verified."""
