"""The coordinating server: the Flower ServerApp and adapter-aggregation strategies."""
