"""A BERG root and the backbone read straight from S3 (loopback server)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from berg_scale.io.storage import filesystem_for
from berg_scale.models import ModelSet, ReadoutSpec, families
from berg_scale.models.vit import BackboneMissingError

pytestmark = pytest.mark.s3


def test_root_and_backbone_on_s3(berg_root, backbone, s3_server, s3_bucket, tmp_path):
    storage = s3_server.storage_options()
    fs, bucket = filesystem_for(s3_bucket, storage)
    fsav = ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"roi": "V2d"}, outputs=("responses", "mean"))
    fwrf = ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "lateral"})
    files = families.weight_files(fwrf.model_id, 1, "lateral") + [families.metadata_file(fwrf.model_id, 1, "lateral")]
    files += families.weight_files(fsav.model_id, 1) + [families.metadata_file(fsav.model_id, 1)]
    for rel in files:
        fs.put(str(berg_root / rel), f"{bucket}/root/{rel}")
    # A half-size copy of the backbone keeps the upload small; both runs use it.
    half = tmp_path / "vit.pth"  # the name the S3 copy has: hashes are keyed by file name
    torch.save({k: v.half() for k, v in torch.load(backbone, weights_only=True).items()}, half)
    fs.put(str(half), f"{bucket}/vit.pth")

    images = np.random.default_rng(0).integers(0, 256, (2, 3, 230, 240), dtype=np.uint8)
    remote = ModelSet(f"{s3_bucket}/root", [fsav, fwrf], device="cpu", backbone_path=f"{s3_bucket}/vit.pth",
                      storage=storage)
    local = ModelSet(str(berg_root), [fsav, fwrf], device="cpu", backbone_path=str(half))
    got, want = remote.forward(images), local.forward(images)
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])
    assert remote.weight_hashes == local.weight_hashes
    assert {families.metadata_file(fwrf.model_id, 1, "lateral"), "backbone:vit.pth"} <= set(local.weight_hashes), \
        "metadata and the named backbone are vouched for too"
    with pytest.raises(BackboneMissingError, match="vit-missing.pth"):
        ModelSet(f"{s3_bucket}/root", [fsav], device="cpu", backbone_path=f"{s3_bucket}/vit-missing.pth",
                 storage=storage)
