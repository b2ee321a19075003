"""Error types shared by every validation boundary (files, CLI, HTTP).

All of them carry a human-readable message naming the problem and a mapping of
field name to a list of messages, which is the ``errors`` member of the one JSON
error shape the services return.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


class FedfraudInputError(ValueError):
    """Input that fedfraud refuses, with the offending fields named.

    Parameters
    ----------
    message
        One sentence saying what is wrong.
    errors
        Field name to messages, e.g. ``{"amount": ["negative in rows 3, 17"]}``.
    """

    def __init__(self, message: str, errors: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors: dict[str, list[str]] = {k: list(v) for k, v in (errors or {}).items()}

    def __str__(self) -> str:
        if not self.errors:
            return self.message
        details = "; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in self.errors.items())
        return f"{self.message} ({details})"


class TransactionValidationError(FedfraudInputError):
    """A transaction file or frame that does not satisfy the transaction schema."""
