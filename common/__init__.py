"""fedtune's bottom layer: data, models, private training, privacy accounting and the CLI front door.

Invariant: ``common`` imports none of ``client``, ``server`` or ``simulations``; those packages extend the CLI
through the ``fedtune.commands`` entry-point group instead (see :mod:`common.cli.app`).
"""

__version__ = "0.1.0"
