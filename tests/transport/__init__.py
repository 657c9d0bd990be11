"""Tests of pqcall.transport."""
