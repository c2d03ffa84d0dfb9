"""Error reasons in shard markers and rejection messages group by kind and read whole."""

from __future__ import annotations

import pytest

from berg_scale.engine.shard_pipeline import _reason_kind


@pytest.mark.parametrize("reason, kind", [
    ("truncated image data (image file is truncated (3 bytes not processed))", "truncated image data"),
    ("member 'photos/2019/a-long-holiday-folder/IMG_0001.jpg' is a symbolic link (not followed)",
     "member '…' is a symbolic link"),
    ("member 'b.jpg' is a symbolic link (not followed)", "member '…' is a symbolic link"),
    ("(odd)", "(odd)"),
])
def test_reasons_group_by_kind_without_member_names(reason, kind):
    assert _reason_kind(reason) == kind


def test_a_long_kind_is_cut_at_a_word():
    reason = "the decoder gave up on this image because the stream had an unexpected marker sequence"
    kind = _reason_kind(reason)
    assert len(kind) <= 60 and kind.endswith("…")
    assert reason.startswith(kind[:-1]) and reason[len(kind) - 1] == " "  # a whole word before the cut
