"""Local training of a LoRA adapter, privately (Opacus DP-SGD) or, by explicit choice, not."""
