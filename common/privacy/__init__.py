"""Differential-privacy accounting: mechanism events, accountants (PRV, RDP), noise calibration, the ledger."""
