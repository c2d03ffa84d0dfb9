"""fp32 outputs match an independent float64 reference of BERG's math.

Metric everywhere: max |ours - reference| / max |reference| over one output column,
required < 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

import berg_reference as ref
from model_images import smooth_images
from berg_scale.models import ModelSet, ReadoutSpec, layout

TOL = 1e-5
FSAV = "fmri-nsd_fsaverage-vit_b_32"
EEG = "eeg-things_eeg_2-vit_b_32"
FWRF = "fmri-nsd-fwrf"


@pytest.fixture(scope="module")
def vit_reference(berg_root, backbone_state, images_square, images_odd):
    """Float64 features of both image sets (the expensive part, shared by tests)."""
    return {
        "square": ref.vit_features(backbone_state, ref.vit_preprocess(images_square)),
        "odd": ref.vit_features(backbone_state, ref.vit_preprocess(images_odd)),
    }


def _images(name, images_square, images_odd):
    return images_square if name == "square" else images_odd


@pytest.mark.parametrize("image_set", ["square", "odd"])
def test_fsaverage_selections_match_reference(berg_root, backbone, vit_reference, images_square,
                                              images_odd, image_set):
    rng = np.random.default_rng(3)
    lh_mask = (rng.uniform(size=163842) < 0.001).astype(np.int8)
    specs = [
        ReadoutSpec(FSAV, 2),
        ReadoutSpec(FSAV, 2, {"roi": "FFA-1"}, outputs=("responses", "mean")),
        ReadoutSpec(FSAV, 2, {"lh_vertices": lh_mask}),
        ReadoutSpec(FSAV, 2, {"roi": "V1v"}, downsample="fsaverage5"),
    ]
    ms = ModelSet(str(berg_root), specs, device="cpu", backbone_path=backbone)
    out = ms.forward(_images(image_set, images_square, images_odd))

    weights = ref.load_npy_dict(berg_root / layout.weight_files(FSAV, 2)[0])
    meta = ref.load_npy_dict(berg_root / layout.metadata_file(FSAV, 2))["fmri"]
    scores = ref.pca_scores(weights, vit_reference[image_set])

    def both(lh_rows, rh_rows):
        return np.concatenate([ref.regression(weights["lh_reg_param"], scores, lh_rows),
                               ref.regression(weights["rh_reg_param"], scores, rh_rows)], axis=1)

    everything = np.arange(163842)
    expected = {
        f"{FSAV}/sub-02/all": both(everything, everything),
        f"{FSAV}/sub-02/FFA-1": both(meta["lh_fsaverage_rois"]["FFA-1"], meta["rh_fsaverage_rois"]["FFA-1"]),
        ms.readouts[2].column_base: both(np.flatnonzero(lh_mask), everything),
    }
    v1_lh = meta["lh_fsaverage_rois"]["V1v"]
    v1_rh = meta["rh_fsaverage_rois"]["V1v"]
    expected[f"{FSAV}/sub-02/V1v@fsaverage5"] = both(v1_lh[v1_lh < 10242], v1_rh[v1_rh < 10242])
    ffa_ncsnr = np.concatenate([meta["lh_ncsnr"][meta["lh_fsaverage_rois"]["FFA-1"]],
                                meta["rh_ncsnr"][meta["rh_fsaverage_rois"]["FFA-1"]]])
    expected[f"{FSAV}/sub-02/FFA-1:mean"] = expected[f"{FSAV}/sub-02/FFA-1"][:, ffa_ncsnr > 0.5].mean(1)

    assert set(out) == set(expected)
    for name, value in expected.items():
        assert out[name].dtype == np.float32
        assert ref.rel_error(out[name], value) < TOL, name
    # Responses actually vary with the image (a constant output would pass trivially).
    assert np.std(expected[f"{FSAV}/sub-02/all"], axis=0).mean() > 0.05
    column = ms.column(f"{FSAV}/sub-02/FFA-1")
    assert column.dims == ("vertex",)
    np.testing.assert_array_equal(column.coords["vertex"][: len(meta["lh_fsaverage_rois"]["FFA-1"])],
                                  meta["lh_fsaverage_rois"]["FFA-1"])
    np.testing.assert_allclose(column.coords["ncsnr"], ffa_ncsnr)


def test_eeg_selections_match_reference(berg_root, backbone, vit_reference, images_odd):
    timepoints = np.zeros(140, dtype=int)
    timepoints[[0, 20, 21, 139]] = 1
    channels = ["Oz", "Fp1", "O2", "Oz"]  # order kept, duplicates allowed (as BERG)
    specs = [
        ReadoutSpec(EEG, 1),
        ReadoutSpec(EEG, 1, {"channels": channels}),
        ReadoutSpec(EEG, 1, {"timepoints": timepoints}),
        ReadoutSpec(EEG, 1, {"channels": ["Cz"], "timepoints": timepoints.tolist()}),
    ]
    ms = ModelSet(str(berg_root), specs, device="cpu", backbone_path=backbone)
    out = ms.forward(images_odd)
    weights = ref.load_npy_dict(berg_root / layout.weight_files(EEG, 1)[0])
    meta = ref.load_npy_dict(berg_root / layout.metadata_file(EEG, 1))
    scores = ref.pca_scores(weights, vit_reference["odd"])
    selections = [(None, None), (channels, None), (None, timepoints), (["Cz"], timepoints)]
    for spec, (ch, tp) in zip(specs, selections):
        expected = ref.eeg_responses(weights, meta, scores, ch, tp)
        got = out[spec.column_base]
        assert got.shape == expected.shape
        assert ref.rel_error(got, expected) < TOL, spec.column_base
    column = ms.column(specs[1].column_base)
    assert column.dims == ("repetition", "channel", "time")
    assert list(column.coords["channel"]) == channels
    np.testing.assert_allclose(ms.column(specs[2].column_base).coords["time"], [-0.1, 0.0, 0.005, 0.595])
    assert out[specs[0].column_base].shape == (3, 4, 63, 140)


@pytest.mark.parametrize("size", [(241, 300), (227, 227)])
def test_fwrf_single_and_split_match_reference(berg_root, size):
    images = smooth_images(5, *size, seed=4)
    specs = [ReadoutSpec(FWRF, 1, {"roi": "V1"}, outputs=("responses", "mean")),
             ReadoutSpec(FWRF, 1, {"roi": "lateral"})]
    ms = ModelSet(str(berg_root), specs, device="cpu", batch_size=2)  # 3 batches, last one short
    out = ms.forward(images)
    x = ref.fwrf_preprocess(images)
    v1 = ref.fwrf_responses(ref.load_pt(berg_root / layout.weight_files(FWRF, 1, "V1")[0]), 1, x)
    split = [ref.fwrf_responses(ref.load_pt(berg_root / f), 1, x) for f in layout.weight_files(FWRF, 1, "lateral")]
    lateral = np.concatenate(split, axis=1)
    assert lateral.shape == (5, 7) and [s.shape[1] for s in split] == [4, 3]
    assert ref.rel_error(out[f"{FWRF}/sub-01/V1"], v1) < TOL
    assert ref.rel_error(out[f"{FWRF}/sub-01/lateral"], lateral) < TOL
    ncsnr = ref.load_npy_dict(berg_root / layout.metadata_file(FWRF, 1, "V1"))["fmri"]["ncsnr"]
    assert ref.rel_error(out[f"{FWRF}/sub-01/V1:mean"], v1[:, ncsnr > 0.5].mean(1)) < TOL
    assert np.std(v1, axis=0).mean() > 0.01


def test_float16_output_and_bf16_precision_stay_close(berg_root, backbone, images_square):
    spec32 = ReadoutSpec(FSAV, 1, {"roi": "hV4"})
    ms32 = ModelSet(str(berg_root), [spec32], device="cpu", backbone_path=backbone)
    exact = ms32.forward(images_square)[spec32.column_base]
    half_out = ReadoutSpec(FSAV, 1, {"roi": "hV4"}, dtype="float16")
    got16 = ModelSet(str(berg_root), [half_out], device="cpu", backbone_path=backbone).forward(images_square)
    assert got16[half_out.column_base].dtype == np.float16
    assert ref.rel_error(got16[half_out.column_base], exact.astype(np.float64)) < 1e-3
    bf16 = ModelSet(str(berg_root), [spec32], device="cpu", precision="bf16", backbone_path=backbone)
    approx = bf16.forward(images_square)[spec32.column_base]
    error = ref.rel_error(approx, exact.astype(np.float64))
    assert 0 < error < 0.1  # reduced precision really ran, and stays usable


def test_folded_projection_alone_is_float64_accurate(berg_root, backbone, vit_reference):
    """The scaler fold and sliced projection, given identical features, lose < 1e-6."""
    import torch

    specs = [ReadoutSpec(FSAV, 3), ReadoutSpec(EEG, 2)]
    group = ModelSet(str(berg_root), specs, device="cpu", backbone_path=backbone).groups[0]
    features = vit_reference["odd"].astype(np.float32)
    scores = group.project(torch.from_numpy(features)).numpy()
    for spec, (start, k) in zip(specs, [(0, 3), (3, 250)]):
        weights = ref.load_npy_dict(berg_root / layout.weight_files(spec.model_id, spec.subject)[0])
        expected = ref.pca_scores(weights, features.astype(np.float64))
        assert ref.rel_error(scores[:, start : start + k], expected) < 1e-6
