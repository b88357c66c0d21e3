"""The web interface for people: HTML pages at the same URLs as the API."""
