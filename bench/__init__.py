"""Benchmarks (not tests): each module runs as ``python -m bench.<name> [--quick]``, prints a
table and writes JSON to ``bench/results/``. ``python -m bench all`` runs them in order."""
