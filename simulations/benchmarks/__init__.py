"""Benchmark scripts: each prints its figures (ratios measured side by side in one run); none is a timed test."""
