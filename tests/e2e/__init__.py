"""End-to-end tests: real processes on separate hosts (network namespaces)."""
