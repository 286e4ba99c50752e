"""The queue database's schema history, as Alembic migrations (see daemon/migrate.py)."""
