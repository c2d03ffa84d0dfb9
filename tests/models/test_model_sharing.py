"""All ViT readouts share one backbone pass and give the same results as separate runs.

Memory choice: an EEG weight file keeps the real (250, 460800) PCA, and the folded fp32
projection of one EEG subject is 460 MB. The default test therefore uses 8 fsaverage
subjects (k = 3) and 2 distinct EEG subjects (float16 components on disk), about 2 GB
at peak. The slow test runs the full 8 + 10 set; its 10 EEG weight files are hard links
to one file (distinct metadata and distinct channel selections per subject), and
identical files are folded once, so it stays within a few GB as well.
"""

from __future__ import annotations

import numpy as np
import pytest

import berg_reference as ref
from berg_scale.models import ModelSet, ReadoutSpec
from berg_scale.synthetic.berg_root import backbone_file, make_synthetic_root

FSAV = "fmri-nsd_fsaverage-vit_b_32"
EEG = "eeg-things_eeg_2-vit_b_32"
CHANNELS = ["Fp1", "Oz", "O1", "O2", "Pz", "Cz", "T7", "T8", "F3", "F4"]


def _check_shared_equals_separate(root, backbone, specs, images, batch_size=2):
    shared = ModelSet(str(root), specs, device="cpu", backbone_path=backbone, batch_size=batch_size)
    together = shared.forward(images)
    n_batches = -(-images.shape[0] // batch_size)
    assert shared.backbone_passes == n_batches  # one pass per batch for all readouts
    passes = 0
    for spec in specs:
        alone = ModelSet(str(root), [spec], device="cpu", backbone_path=backbone, batch_size=batch_size)
        result = alone.forward(images)
        passes += alone.backbone_passes
        for name, value in result.items():
            assert ref.rel_error(together[name], value.astype(np.float64)) < 1e-5, name
    assert passes == len(specs) * n_batches
    return shared, together


def test_fsaverage_and_eeg_subjects_share_one_backbone_pass(berg_root, backbone, images_odd):
    specs = [ReadoutSpec(FSAV, s, {"roi": "FFA-1"}) for s in range(1, 9)]
    specs += [ReadoutSpec(EEG, 1), ReadoutSpec(EEG, 2, {"channels": ["Oz", "Cz"]})]
    shared, together = _check_shared_equals_separate(berg_root, backbone, specs, images_odd)
    assert shared.groups[0].projection.shape[0] == 8 * 3 + 2 * 250  # one stacked projection
    # Different subjects really give different responses.
    assert not np.allclose(together[f"{EEG}/sub-01/all"][:, :, [62, 22]], together[specs[-1].column_base])


@pytest.mark.slow
def test_eight_fsaverage_and_ten_eeg_subjects(tmp_path, images_odd):
    root = make_synthetic_root(
        tmp_path / "root",
        models=(FSAV, EEG),
        fsaverage_subjects=range(1, 9),
        eeg_subjects=range(1, 11),
        eeg_components_dtype="float16",
        eeg_link_subjects=True,
        seed=11,
    )
    specs = [ReadoutSpec(FSAV, s) for s in range(1, 9)]
    specs += [ReadoutSpec(EEG, s, {"channels": CHANNELS[: s]}) for s in range(1, 11)]
    shared, _ = _check_shared_equals_separate(root, str(backbone_file(root)), specs, images_odd[:2])
    assert len(shared.readouts) == 18
    assert shared.groups[0].projection.shape[0] == 8 * 3 + 250  # identical EEG files folded once
