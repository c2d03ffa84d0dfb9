"""`forward_async`: the same results as `forward`, ready at once on the CPU."""

from __future__ import annotations

import numpy as np

from berg_scale.models import ModelSet, ReadoutSpec


def test_forward_async_is_forward_on_the_cpu(berg_root, backbone, images_odd):
    specs = [ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"roi": "hV4"}, outputs=("responses", "mean")),
             ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"})]
    model = ModelSet(str(berg_root), specs, device="cpu", batch_size=2, backbone_path=backbone)
    pending = model.forward_async(images_odd)
    assert pending.done  # nothing to wait for on the CPU: the engine writes it at once
    asynchronous = pending.result()
    synchronous = model.forward(images_odd)
    assert list(asynchronous) == list(synchronous) == [c.name for c in model.columns]
    for name, values in synchronous.items():
        assert values.shape[0] == len(images_odd)
        np.testing.assert_array_equal(asynchronous[name], values)  # bit-identical


def test_no_images_give_empty_columns_of_the_right_shape(berg_root, backbone):
    specs = [ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"})]
    model = ModelSet(str(berg_root), specs, device="cpu", backbone_path=backbone)
    out = model.forward_async(np.zeros((0, 3, 64, 64), np.uint8)).result()
    for column in model.columns:
        assert out[column.name].shape == (0, *column.shape) and out[column.name].dtype == column.dtype
