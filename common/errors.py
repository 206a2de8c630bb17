"""The domain exception hierarchy.

Every failure a user can cause (bad data, bad configuration, an exhausted budget, a tampered ledger, a bad
certificate) is raised as a subclass of :class:`FedtuneError` carrying one self-contained message that names the
offending file or value and the rule it broke. Library code raises; only the CLI turns an error into a printed line
and an exit code (``exit_code`` below), so the same errors stay usable from Python and from the Flower apps.
"""

from __future__ import annotations


class FedtuneError(Exception):
    """Base class of every error fedtune raises on purpose."""

    exit_code: int = 1


class ConfigError(FedtuneError):
    """A configuration value or combination of options breaks a rule (e.g. a sample rate outside (0, 1])."""

    exit_code = 2


class DataValidationError(FedtuneError):
    """A data file is unreadable or breaks a rule; the message names the file, the line and the rule."""

    exit_code = 65  # EX_DATAERR from sysexits.h

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None) -> None:
        location = ""
        if path is not None:
            location = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(f"{location}{message}")
        self.path = path
        self.line = line


class ModelError(FedtuneError):
    """A base model or adapter is missing, altered or incompatible."""


class PrivacyParameterError(ConfigError):
    """A differential-privacy parameter (sigma, sample rate, steps, delta, epsilon) is out of its domain."""


class BudgetExhaustedError(FedtuneError):
    """Training was refused because the planned round would push a dataset past its epsilon limit."""

    exit_code = 3


class LedgerError(FedtuneError):
    """Base class of privacy-ledger failures."""

    exit_code = 4


class LedgerCorruptError(LedgerError):
    """A ledger file cannot be parsed (truncated, malformed or from an unknown schema); names the line."""


class LedgerTamperError(LedgerError):
    """A ledger's hash chain or signature does not verify; names the first bad event."""


class UpdateRejectedError(FedtuneError):
    """A model update from a peer failed validation (unexpected key, shape, dtype, non-finite value, norm)."""


class CertificateError(FedtuneError):
    """A certificate or key is unreadable, expired, mismatched or of the wrong kind."""

    exit_code = 5


class FederationError(FedtuneError):
    """A federation could not run to completion (too few valid updates, crashed clients, a process failed)."""

    exit_code = 6
