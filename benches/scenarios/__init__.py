"""The benchmark scenarios run by benches/run.py."""
