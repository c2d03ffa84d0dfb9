"""The one error type of response-space search (printed by the CLI as one line)."""

from __future__ import annotations

from berg_scale.errors import BergScaleError


class SearchError(BergScaleError):
    """The responses, the target or the options do not allow the search asked for."""
