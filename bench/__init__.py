"""Benchmarks: how close Gophermart runs to the limits of its own machine (``python -m bench``)."""
