"""Comparing attention designs: training runs per design and seed, their statistics, reports, plots and sweeps."""
