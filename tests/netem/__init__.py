"""Tests of pqcall.netem."""
