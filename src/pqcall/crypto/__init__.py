"""The cryptographic core: pure functions and sans-I/O state machines, no sockets.

See docs/protocol.md for the formats and the key schedule.
"""
