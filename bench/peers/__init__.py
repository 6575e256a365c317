"""Benchmarks of xcore against other systems run on the same machine.

``python bench/peers/run.py`` runs them all and prints one table; see the
"Against peers" section of ``bench/README.md``.
"""
