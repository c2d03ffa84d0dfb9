"""`compile=True` (resources.compile): the ViT backbone runs through torch.compile.

Compiling on CPU takes about a minute on two cores, hence one slow test that compiles
once and checks everything it can; the failure message is checked without a compiler run.
"""

from __future__ import annotations

import berg_reference as ref
import numpy as np
import pytest
import torch

from berg_scale.errors import BergScaleError
from berg_scale.models import ModelSet, ReadoutSpec

FSAV = "fmri-nsd_fsaverage-vit_b_32"


@pytest.mark.slow
def test_compiled_backbone_matches_eager_fp32(berg_root, backbone, images_square, images_odd):
    specs = [ReadoutSpec(FSAV, 1, {"roi": "hV4"}, outputs=("responses", "mean")), ReadoutSpec(FSAV, 2)]
    eager = ModelSet(str(berg_root), specs, device="cpu", backbone_path=backbone, batch_size=3)
    compiled = ModelSet(str(berg_root), specs, device="cpu", backbone_path=backbone, batch_size=3, compile=True)
    assert compiled.backbone_passes == 0  # the warm-up passes are not counted
    for images in (images_square, images_odd, images_square[:1]):
        expected = eager.forward(images)
        got = compiled.forward(images)
        for name, values in expected.items():
            assert ref.rel_error(got[name], values.astype(np.float64)) < 1e-5, name
    assert compiled.backbone_passes == eager.backbone_passes == 3
    assert compiled.fingerprint != eager.fingerprint


def test_a_failing_compiler_stops_the_model_set_with_the_fix(berg_root, backbone, monkeypatch):
    def broken_compile(function, **options):
        def run(*args, **kwargs):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    spec = ReadoutSpec(FSAV, 1, {"roi": "hV4"})
    with pytest.raises(BergScaleError, match=r"torch.compile failed on cpu \(InvalidCxxCompiler.*\).*"
                                             r"resources.compile: false"):
        ModelSet(str(berg_root), [spec], device="cpu", backbone_path=backbone, compile=True)
    assert ModelSet(str(berg_root), [spec], device="cpu", backbone_path=backbone).forward(
        np.zeros((1, 3, 64, 64), dtype=np.uint8))[spec.column_base].shape[0] == 1
