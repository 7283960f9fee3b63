"""Durable state: the spool of received files, the SQLite index, jobs, outbox and audit."""
