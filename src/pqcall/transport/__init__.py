"""Transport: UDP endpoints, path discovery, the media session.

The network emulator used by tests and benchmarks lives in :mod:`pqcall.netem`.
See DESIGN.md, "Transport".
"""
