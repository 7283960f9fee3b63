"""Read-only status page and JSON health endpoint served by `hccnode serve` (see server.py)."""
