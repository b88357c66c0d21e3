"""Authentication and permissions: passwords, tokens, credentials, throttling and the one ACL."""
