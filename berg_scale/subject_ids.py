"""Subject numbers as a researcher may write them: `1`, `01` or `sub-01`.

BERG's files, the response columns and the experiments' tables name subjects `sub-01`;
a command or config that takes a subject accepts that form too, so a name copied from
any of them works where a number is asked for.
"""

from __future__ import annotations

import argparse
import re
from typing import Any

_SUBJECT = re.compile(r"(?:sub-?)?0*(\d{1,4})", re.IGNORECASE)
EXPECTED = "a subject number such as 1, 01 or sub-01"


def parse_subject(value: Any) -> int:
    """The subject number `value` names; ValueError naming the accepted forms otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"expected {EXPECTED}, not {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SUBJECT.fullmatch(value.strip())
        if match:
            return int(match.group(1))
    raise ValueError(f"expected {EXPECTED}, got {value!r}")


def subject_argument(text: str) -> int:
    """argparse `type=` for subject options (`--subjects 1 sub-02`)."""
    try:
        return parse_subject(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def subject_config_value(value: Any) -> Any:
    """A config's subject entry as a number; other values pass on to the field's own checks."""
    if isinstance(value, str):
        return parse_subject(value)
    return value
