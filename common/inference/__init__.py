"""Using a trained adapter: predictions and generations (``fedtune predict``, ``fedtune generate``)."""
