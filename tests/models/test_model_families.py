"""Family descriptors: every card names one, and what they answer matches the cards."""

from __future__ import annotations

import numpy as np
import pytest

from berg_scale.errors import BergScaleError
from berg_scale.models import ReadoutSpec, get_card, known_model_ids
from berg_scale.models.families import (
    EEG,
    FSAVERAGE,
    FWRF,
    VIT_B_32,
    backbones_of,
    family_for,
    family_name,
    get_family,
)
from berg_scale.models.registry import register_model, unregister_model


def test_every_builtin_card_names_a_family_whose_recipe_it_states():
    assert [family_for(m) for m in known_model_ids()] == [FWRF, FSAVERAGE, EEG]
    for model_id in known_model_ids():
        assert get_card(model_id).preprocessing == family_for(model_id).recipe


def test_backbones_and_roi_dependence():
    assert backbones_of(known_model_ids()) == [VIT_B_32]
    assert backbones_of(["fmri-nsd-fwrf"]) == []
    assert [family_for(m).files_per_roi for m in known_model_ids()] == [True, False, False]


def test_metadata_needed_before_a_run():
    assert not FWRF.metadata_required(ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"}))
    assert FWRF.metadata_required(ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"}, outputs=("mean",)))
    assert FSAVERAGE.metadata_required(ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1))
    assert EEG.metadata_required(ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1))


def test_widths_without_metadata():
    def nothing(relative: str) -> None:
        return None

    fwrf = ReadoutSpec("fmri-nsd-fwrf", 2, {"roi": "hV4"})
    width = FWRF.output_width(fwrf, fwrf.resolve(), nothing)
    assert (width.values, width.source) == (687, "subject-1 count (approx.)")
    eeg = ReadoutSpec("eeg-things_eeg_2-vit_b_32", 1, {"channels": ["Oz", "O1"]})
    assert EEG.output_width(eeg, eeg.resolve(), nothing).values == 4 * 2 * 140
    fsav = ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, downsample="fsaverage5")
    assert FSAVERAGE.output_width(fsav, fsav.resolve(), nothing).values == 2 * 10242
    roi = ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"roi": "V1v"})
    assert FSAVERAGE.output_width(roi, roi.resolve(), nothing).values is None


def test_fsaverage_output_splits_by_hemisphere_as_berg_returns_it():
    responses = np.arange(10.0).reshape(2, 5)
    lh, rh = FSAVERAGE.split_output(responses, {"hemisphere": np.array(["lh", "lh", "lh", "rh", "rh"])})
    np.testing.assert_array_equal(lh, responses[:, :3])
    np.testing.assert_array_equal(rh, responses[:, 3:])
    assert FWRF.split_output(responses, {}) is responses


def test_unknown_and_missing_families_are_named():
    assert family_name("not-a-model") is None and family_name(None) is None
    assert family_name("fmri-nsd-fwrf") == "fwrf"
    with pytest.raises(BergScaleError, match="no model family named 'nope'"):
        get_family("nope")
    register_model({"model_id": "no-family", "modality": "fMRI", "dataset": "x", "subjects": [1]})(object)
    try:
        with pytest.raises(BergScaleError, match="names no family"):
            family_for("no-family")
    finally:
        unregister_model("no-family")
