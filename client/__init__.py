"""A typed Python client for the umarvel-search HTTP API."""
