"""fedtune's bottom layer: data, models, private training, privacy accounting and the federation protocol.

Invariant: ``common`` imports none of ``cli``, ``client``, ``server`` or ``simulations``, and no terminal UI library
(typer, rich); ``tests/common/test_layering.py`` checks this in a fresh interpreter.
"""

__version__ = "0.1.0"
