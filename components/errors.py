"""The one error type the stages raise for bad input or settings.

A :class:`SlipwayError` carries what is wrong and how to fix it; the CLIs and the pipeline
runner print both and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SlipwayError(Exception):
    """Bad input or settings, explained.

    Args:
        message: what is wrong, naming the file, column, row or key.
        fix: what the user can do about it.
    """

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


def did_you_mean(word: str, choices: Iterable[str], listing: bool = True) -> str:
    """A 'did you mean ...?' hint for a misspelt name, or a list of the valid names.

    ``listing=False`` gives only the hint ("" when nothing is close): for callers that say
    elsewhere where the valid names are, or where the list could be long.
    """
    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(word), choices, n=1, cutoff=0.6)
    if not listing:
        return f"did you mean {close[0]!r}?" if close else ""
    if close:
        return f"did you mean {close[0]!r}? (valid: {', '.join(choices)})"
    return f"valid: {', '.join(choices)}"
