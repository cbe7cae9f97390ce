"""Benchmarks: dbbackup's pipeline next to the bare dump tools (python3 -m tests.benchmarks.run).

Not collected by pytest (no test_*.py files here, and pyproject's testpaths leave this out).
"""
