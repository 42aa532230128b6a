"""The one exception tq-finetune turns into a one-line message and exit status 2."""

from __future__ import annotations


class FinetuneError(Exception):
    """Bad input or a failed step, with a message meant for the user (no traceback)."""
