"""The benchmark suite: ``python -m bench <scenario> [--size N]``.

Each scenario starts the real service (``run.py`` with the embedded database) and its load
clients as separate processes on 127.0.0.1, and a baseline in the same invocation, then
prints its figures and ratios as plain lines. Not run by CI; tests/test_bench_smoke.py runs
every scenario at a tiny size so the suite cannot rot.
"""
