"""The signaling server: HTTP API and push events, storage, relay, discovery, metrics.

:func:`pqcall.server.app.create_app` builds the FastAPI application from
:class:`pqcall.server.settings.ServerSettings`; ``pqcall server`` runs it under
uvicorn. See ``docs/server.md``.
"""
