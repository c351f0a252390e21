"""What the service keeps: SQL tables and sessions, states, API keys, fences, heartbeats,
the audit log, and the Redis client."""
