"""Local federations on Flower's simulation engine, and benchmark scripts."""
