"""Tests of pqcall.server."""
