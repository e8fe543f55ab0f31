"""Evaluators for the standard benchmarks: metrics and dataset loaders."""
