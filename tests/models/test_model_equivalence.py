"""fp32 outputs match an independent float64 reference of BERG's math.

Metric: max |ours - reference| / max |reference| over one output column, required < 1e-5;
the folded projection alone is held to a float32 error bound computed from its inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import berg_reference as ref
from model_images import smooth_images
from berg_scale.models import ModelSet, ReadoutSpec, families

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

    weights = ref.load_npy_dict(berg_root / families.weight_files(FSAV, 2)[0])
    meta = ref.load_npy_dict(berg_root / families.metadata_file(FSAV, 2))["fmri"]
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
    weights = ref.load_npy_dict(berg_root / families.weight_files(EEG, 1)[0])
    meta = ref.load_npy_dict(berg_root / families.metadata_file(EEG, 1))
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
    v1 = ref.fwrf_responses(ref.load_pt(berg_root / families.weight_files(FWRF, 1, "V1")[0]), 1, x)
    split = [ref.fwrf_responses(ref.load_pt(berg_root / f), 1, x) for f in families.weight_files(FWRF, 1, "lateral")]
    lateral = np.concatenate(split, axis=1)
    assert lateral.shape == (5, 7) and [s.shape[1] for s in split] == [4, 3]
    assert ref.rel_error(out[f"{FWRF}/sub-01/V1"], v1) < TOL
    assert ref.rel_error(out[f"{FWRF}/sub-01/lateral"], lateral) < TOL
    ncsnr = ref.load_npy_dict(berg_root / families.metadata_file(FWRF, 1, "V1"))["fmri"]["ncsnr"]
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


U32 = 2.0**-24  # unit roundoff of float32, round to nearest
U64 = 2.0**-53  # unit roundoff of float64
FOLD_FAILURE = 1e-9  # allowed probability, under the rounding model below, that the bound fails anywhere


def _gamma(n: int, u: float) -> float:
    """gamma_n = n u / (1 - n u): |prod_k (1 + d_k)^(+-1) - 1| <= gamma_n for n roundings |d_k| <= u
    (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., Lemma 3.1)."""
    assert n * u < 1
    return n * u / (1 - n * u)


def _gamma_tilde(n: int, lam: float, u: float = U32) -> float:
    """Probabilistic gamma_n: exp(lam sqrt(n) u + n u^2 / (1 - u)) - 1 (Higham & Mary, "A new
    approach to probabilistic rounding error analysis", SIAM J. Sci. Comput. 41(5), 2019). If the
    n rounding errors are independent with mean 0, it bounds |prod_k (1 + d_k) - 1| with
    probability >= 1 - 2 exp(-lam^2 (1 - u)^2 / 2)."""
    return math.expm1(lam * math.sqrt(n) * u + n * u * u / (1 - u))


def _fold_error_terms(weights: dict, features: np.ndarray, centre: np.ndarray, folded: np.ndarray,
                      block: int = 16384) -> dict[str, np.ndarray]:
    """Float64 sums the error bound needs, computed from the very inputs of the model, column
    block by column block (the full float64 (k, 460800) quotient would take about 1 GB).

    T[b, j] = sum_i |x_bi - r_i| |C_ji / s_i|   (the terms of the folded dot product)
    O[j]    = sum_i |C_ji| (|m_i - r_i| / s_i + |pm_i|)   (the terms of the folded offset)
    R[b, j] = sum_i |(x_bi - m_i) / s_i - pm_i| |C_ji|   (the terms of the float64 reference)
    offset  = -sum_i C_ji ((m_i - r_i) / s_i + pm_i) in float64, and the worst ratio of
    |fl32 weight - C / s| to its bound (u32 + 4 u64) |C / s|: one float32 rounding of a
    quotient formed with at most 3 float64 roundings.
    """
    sc, pca = weights["scaler_param"], weights["pca_param"]
    components, scale = pca["components_"], sc["scale_"]
    k, n = components.shape
    x = features.astype(np.float64)
    r = centre.astype(np.float64)
    terms = {"T": np.zeros((x.shape[0], k)), "O": np.zeros(k), "R": np.zeros((x.shape[0], k)),
             "offset": np.zeros(k), "weight_ratio": np.zeros(())}
    for start in range(0, n, block):
        cols = slice(start, start + block)
        c = components[:, cols].astype(np.float64)
        s = scale[cols].astype(np.float64)
        m = sc["mean_"][cols].astype(np.float64)
        pm = pca["mean_"][cols].astype(np.float64)
        w = c / s
        ratio = np.abs(folded[:, cols].astype(np.float64) - w) / ((U32 + 4 * U64) * np.abs(w) + 1e-300)
        terms["weight_ratio"] = np.maximum(terms["weight_ratio"], ratio.max())
        terms["T"] += np.abs(x[:, cols] - r[cols]) @ np.abs(w).T
        terms["O"] += np.abs(c) @ (np.abs(m - r[cols]) / s + np.abs(pm))
        terms["R"] += np.abs((x[:, cols] - m) / s - pm) @ np.abs(c).T
        terms["offset"] -= c @ ((m - r[cols]) / s + pm)
    return terms


def test_folded_projection_alone_is_float64_accurate(berg_root, backbone, vit_reference):
    """The scaler fold and sliced projection, given identical features, lose only float32 rounding.

    Reference, float64: p = ((x - m) / s - pm) @ C.T. The model stores w = fl32(C / s),
    off = fl32(-((m - r) / s + pm) @ C.T) (float64 math) and a float32 centre r, and computes
    out = fl32(off + sum_c P_c), the slices c of n = PROJECTION_CHUNK features added in float64,
    P_c = fl32(sum_{i in c} fl32(x_i - r_i) w_i). Exactly, p = off_exact + sum_i t_i with
    t_i = (x_i - r_i) C_i / s_i, for any r. Error analysis, per image and component:

    * Each t_i reaches P_c through at most n + 4 roundings of size <= u32: the centring, the
      weight (1 / s and the product in float64, then the float32 cast) and the 1 multiplication
      and n - 1 additions of the dot product, in whatever order, blocking or FMA use the BLAS
      picks. So |sum_c (P_c - sum_{i in c} t_i)| <= g T with g = gamma_{n+4} (worst case, any
      order), or g = gamma~_{n+4}(lam) under the model of independent mean-zero rounding errors
      (Higham & Mary 2019, inner products, whatever the order of evaluation).
    * Offset: |off - off_exact| <= u32/(1-u32) |off| + (1+u32) gamma64_{N+8} O.
    * Float64 sum of the slices and the offset: gamma64_{slices+1} (|off| + (1+g) T).
    * Final cast: u32/(1-u32) |out|. The float64 reference itself: gamma64_{N+4} R.

    The bound asserted uses the probabilistic g, with lam chosen so that, under the model, the
    probability that any of the B x K x N terms breaks it is below FOLD_FAILURE. It is about
    sqrt(n) times tighter than the worst case, which on these cancelling sums (T is ~300
    times |p|) would let errors of several percent pass; the observed error is ~1e-4 of it.
    The stored fold is checked on its own, tightly: each weight within one float32 rounding of
    C / s, the offset within the bound above. A dropped term, a wrong scale or a reduced
    precision anywhere in the fold or the projection exceeds these bounds.
    Inputs are fixed (seeded synthetic root and images); nothing depends on the run.
    """
    import torch

    from berg_scale.models.vit_readouts import PROJECTION_CHUNK

    specs = [ReadoutSpec(FSAV, 3), ReadoutSpec(EEG, 2)]
    group = ModelSet(str(berg_root), specs, device="cpu", backbone_path=backbone).groups[0]
    features = vit_reference["odd"].astype(np.float32)
    scores = group.project(torch.from_numpy(features)).numpy().astype(np.float64)
    centre = group.centre.numpy()
    folded = group.projection.numpy()
    offsets = group.offset.numpy().astype(np.float64)
    n_features = features.shape[1]
    n_slices = math.ceil(n_features / PROJECTION_CHUNK)
    n_terms = features.shape[0] * scores.shape[1] * n_features
    lam = math.sqrt(2 * math.log(2 * n_terms / FOLD_FAILURE)) / (1 - U32)
    g = _gamma_tilde(PROJECTION_CHUNK + 4, lam)
    assert g < _gamma(PROJECTION_CHUNK + 4, U32)  # the sharper of the two bounds is the one asserted
    g64_fold = _gamma(n_features + 8, U64)
    for spec, (start, k) in zip(specs, [(0, 3), (3, 250)]):
        weights = ref.load_npy_dict(berg_root / families.weight_files(spec.model_id, spec.subject)[0])
        expected = ref.pca_scores(weights, features.astype(np.float64))
        got = scores[:, start : start + k]
        off = offsets[start : start + k]
        terms = _fold_error_terms(weights, features, centre, folded[start : start + k])
        assert terms["weight_ratio"] <= 1.0, (spec.model_id, "folded weights", float(terms["weight_ratio"]))
        offset_bound = U32 / (1 - U32) * np.abs(off) + 2 * (1 + U32) * g64_fold * terms["O"]
        offset_error = np.abs(off - terms["offset"])
        assert (offset_error <= offset_bound).all(), (spec.model_id, "offset", float((offset_error / offset_bound).max()))
        bound = (
            U32 / (1 - U32) * np.abs(got)
            + g * terms["T"]
            + U32 / (1 - U32) * np.abs(off) + (1 + U32) * g64_fold * terms["O"]
            + _gamma(n_slices + 1, U64) * (np.abs(off) + (1 + g) * terms["T"])
            + _gamma(n_features + 4, U64) * terms["R"]
        ) * (1 + _gamma(n_features + 8, U64))  # the float64 sums of the bound itself
        error = np.abs(got - expected)
        worst = float((error / bound).max())
        assert worst <= 1.0, (spec.model_id, f"error reaches {worst:.3g} of the float32 bound")
