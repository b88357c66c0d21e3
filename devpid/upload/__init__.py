"""Package uploads without the reactor: the streamed form, archive checks, doc zips."""
