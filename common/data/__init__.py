"""Labelled text datasets: reading and validating files, splits, fingerprints and the built-in sample.

Modules are imported directly (``common.data.readers`` ...); this package file stays empty so that light users
(the CLI's ``--help``) do not pay for scikit-learn.
"""
