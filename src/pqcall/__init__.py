"""pqcall: post-quantum, end-to-end encrypted voice calls."""

__version__ = "0.1.0"
