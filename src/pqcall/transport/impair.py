"""The impairment tool in one import: the pure model and the asyncio relay that applies it.

The model lives in :mod:`pqcall.transport.impairment` (sans-I/O) and the relay in
:mod:`pqcall.transport.impair_relay`; this module only re-exports their public names.
"""

from pqcall.transport.impair_relay import Address, Direction, ImpairmentRelay
from pqcall.transport.impairment import (
    GilbertElliott,
    ImpairedLink,
    Impairment,
    ImpairmentModel,
    JitterDistribution,
    LinkStats,
    RandomSource,
    Verdict,
)

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
