"""Network emulation for tests and benchmarks, in one import: the model and the relay.

Kernel netem(8) is not available everywhere (nor without root), so pqcall plays the network
itself. :mod:`pqcall.netem.model` is the sans-I/O impairment model (seeded loss,
Gilbert-Elliott bursts, delay, jitter, duplication, reordering; ``now`` passed in, randomness
passed in); :mod:`pqcall.netem.relay` is the asyncio UDP relay that applies it between two
endpoints on real loopback sockets. This module only re-exports their public names.

Tooling, not product: netem may import transport and media, and only ``bench`` and the tests
import netem.
"""

from pqcall.netem.model import (
    GilbertElliott,
    ImpairedLink,
    Impairment,
    ImpairmentModel,
    JitterDistribution,
    LinkStats,
    RandomSource,
    Verdict,
)
from pqcall.netem.relay import Address, Direction, ImpairmentRelay

__all__ = [
    "Address",
    "Direction",
    "GilbertElliott",
    "ImpairedLink",
    "Impairment",
    "ImpairmentModel",
    "ImpairmentRelay",
    "JitterDistribution",
    "LinkStats",
    "RandomSource",
    "Verdict",
]
