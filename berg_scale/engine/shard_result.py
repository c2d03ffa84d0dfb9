"""What a worker reports for one execution of a shard, and whether a failure is worth retrying.

The worker knows why an execution ended (committed, cancelled, damaged input, a transient
error); the scheduler decides what happens next (done, adopt another execution's commit,
retry with back-off, quarantine). This type is the contract between the two, so the
decision reads a field instead of comparing loose strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any


class ShardOutcome(str, Enum):
    """How one execution ended (the values are the strings logs and benchmarks print)."""

    DONE = "done"  # committed; `marker` is its `_done` payload
    CANCELLED = "cancelled"  # another execution of the shard committed first (or was asked to stop)
    REJECTED = "rejected"  # the bytes as stored cannot succeed: quarantine after this attempt
    FAILED = "error"  # anything else (storage, memory, a bug): retry with back-off


@dataclass(frozen=True)
class ShardResult:
    """One execution's report: which shard, which attempt, on which worker, and how it ended."""

    shard: str
    attempt: int
    worker: int
    outcome: ShardOutcome
    marker: dict[str, Any] | None = None  # DONE only
    error: str | None = None  # REJECTED and FAILED: one line for `_failed/` and logs
    traceback: str | None = None  # FAILED only, for debugging a worker-side bug

    @property
    def status(self) -> str:
        return self.outcome.value

    @property
    def retryable(self) -> bool:
        """A failure another attempt may cure; a rejection never is (same bytes, same result)."""
        return self.outcome is not ShardOutcome.REJECTED

    def failure(self) -> str:
        """The error to record for a failed or rejected attempt."""
        if self.error is not None:
            return self.error
        return "rejected" if self.outcome is ShardOutcome.REJECTED else "unknown error"
