"""Load and capacity benchmarks of the real stack: gRPC workers, the Envoy edge, SQLite and PostgreSQL.

Run with ``python -m bench`` (or ``make bench``); see ``docs/benchmarks.md``.
"""
