"""Base models (hub id, local directory or the verified built-in MiniLM), LoRA/FFA-LoRA and adapter I/O."""
