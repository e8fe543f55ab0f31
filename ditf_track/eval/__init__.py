"""Benchmark evaluators: DAVIS J&F, TAP-Vid point tracking and sparse keypoint PCK."""
