"""The lockd service's storage: SQLAlchemy tables, the repository, Alembic migrations, and the
tamper-evident audit chain.

Importing this package is cheap: :mod:`lockd.trust.auditlog` (the pure chain rules, which the
command line uses to re-check a server's log) needs no database driver; the rest is imported by
the service only.
"""
