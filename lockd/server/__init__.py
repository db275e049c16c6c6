"""The lockd service: a FastAPI app over the store (SQLite embedded, PostgreSQL at scale).

Public API: :func:`lockd.server.app.create_app`, :class:`lockd.server.settings.Settings`,
:func:`lockd.server.run.serve`.
"""
