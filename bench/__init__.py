"""The benchmarks: each bench_*.py prints its own table and, with `--figures PATH`, appends its
headline figures there as JSON lines (bench/figures.py); `python -m bench` runs them all and writes
the summary table of docs/benchmarks.md (bench/runner.py)."""
