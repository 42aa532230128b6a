"""User-facing errors of tq-calibrate.

Every problem caused by the input (bad samples, out-of-range parameters, unreadable or corrupt codebook
files) raises :class:`CalibrationError` or a subclass; the CLI turns them into an argparse-style message
and exit status 2 without a traceback.
"""

from __future__ import annotations


class CalibrationError(ValueError):
    """Bad input to the calibration tool (parameters or data)."""


class CodebookFormatError(CalibrationError):
    """A codebook file that cannot be parsed or fails validation."""


class CodebookHashError(CodebookFormatError):
    """A codebook file whose FNV-1a hash line does not match its contents."""

    def __init__(self, path: str, expected: str, got: str) -> None:
        self.path = path
        self.expected = expected
        self.got = got
        super().__init__(
            f"{path}: codebook hash mismatch: file says fnv1a64 {expected}, contents hash to {got} "
            "(file corrupt or edited by hand)"
        )
