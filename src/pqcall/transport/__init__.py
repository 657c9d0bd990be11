"""Transport: UDP endpoints, path discovery, the media session, and test networks.

``impairment`` is the sans-I/O network model (seeded loss, Gilbert-Elliott bursts, delay,
jitter, duplication, reordering); ``impair_relay`` is the asyncio UDP relay that applies it
between two endpoints on real sockets, for tests and benchmarks (kernel netem is not
available here). See DESIGN.md, "Transport".
"""
