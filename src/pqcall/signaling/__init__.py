"""Signaling: what the server and the softphone say to each other.

- :mod:`~pqcall.signaling.usernames` validates and normalizes account names.
- :mod:`~pqcall.signaling.messages` holds every HTTP body and push event, shared
  by the server and the client.
- :mod:`~pqcall.signaling.callstate` is the call state machine, as a table.
"""
