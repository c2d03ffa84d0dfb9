"""Model cards, BERG's file layout, selection labels and the synth-root command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from berg_scale.cli import main
from berg_scale.models import ReadoutSpec, families, get_card, known_model_ids


def test_registry_lists_builtin_models_without_torch():
    code = (
        "import sys; from berg_scale.models import known_model_ids, get_card, ReadoutSpec;"
        "from berg_scale.models.families import weight_files;"
        "ids = known_model_ids(); ReadoutSpec(ids[0], 1, {'roi': 'V1'}).resolve();"
        "print(ids, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == (
        "['fmri-nsd-fwrf', 'fmri-nsd_fsaverage-vit_b_32', 'eeg-things_eeg_2-vit_b_32'] False"
    )


def test_cards_describe_subjects_rois_channels():
    fwrf, fsav, eeg = (get_card(m) for m in known_model_ids()[:3])
    assert fwrf.subjects == tuple(range(1, 9)) and len(fwrf.rois) == 23 and fwrf.selection_required
    assert fwrf.split_rois == ("lateral", "ventral")
    assert len(fsav.rois) == 31 and fsav.vertices_per_hemisphere == 163842
    assert fsav.canonical_roi("OVWFA") == "OWFA" and fsav.canonical_roi("OWFA") == "OWFA"
    assert eeg.subjects == tuple(range(1, 11)) and len(eeg.channels) == 63
    assert eeg.channels[0] == "Fp1" and eeg.channels[62] == "AF8" and eeg.n_timepoints == 140


def test_layout_paths_are_berg_paths():
    assert families.weight_files("eeg-things_eeg_2-vit_b_32", 3) == [
        "encoding_models/modality-eeg/train_dataset-things_eeg_2/model-vit_b_32/"
        "encoding_models_weights/weights_subject-03.npy"
    ]
    assert families.metadata_file("fmri-nsd_fsaverage-vit_b_32", 8) == (
        "encoding_models/modality-fmri/train_dataset-nsd_fsaverage/model-vit_b_32/metadata/metadata_subject-08.npy"
    )
    base = "encoding_models/modality-fmri/train_dataset-nsd/model-fwrf/"
    assert families.weight_files("fmri-nsd-fwrf", 1, "FFA-1") == [
        base + "encoding_models_weights/weights_sub-01_roi-FFA-1.pt"
    ]
    assert families.weight_files("fmri-nsd-fwrf", 2, "ventral") == [
        base + "encoding_models_weights/weights_sub-02_roi-ventral_split-1.pt",
        base + "encoding_models_weights/weights_sub-02_roi-ventral_split-2.pt",
    ]
    assert families.metadata_file("fmri-nsd-fwrf", 2, "ventral") == base + "metadata/metadata_sub-02_roi-ventral.npy"
    with pytest.raises(Exception, match="plain name"):
        families.weight_files("fmri-nsd-fwrf", 1, "../../etc")


def test_column_names_and_stable_selection_labels():
    assert ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"}).column_base == "fmri-nsd-fwrf/sub-01/V1"
    assert ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1).column_base == "fmri-nsd_fsaverage-vit_b_32/sub-01/all"
    assert ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 2, {"roi": "OVWFA"}).label == "OWFA"
    mask = np.zeros(163842, dtype=int)
    mask[[5, 9]] = 1
    as_array = ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"lh_vertices": mask})
    as_list = ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"lh_vertices": mask.tolist()})
    assert as_array.label == as_list.label and as_array.label.startswith("sel-") and len(as_array.label) == 12
    mask[7] = 1
    assert ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"lh_vertices": mask}).label != as_array.label
    eeg = ReadoutSpec("eeg-things_eeg_2-vit_b_32", 10, {"channels": ["Oz"]})
    assert eeg.column_base.startswith("eeg-things_eeg_2-vit_b_32/sub-10/sel-")
    assert ReadoutSpec("eeg-things_eeg_2-vit_b_32", 10, {"channels": ["Cz"]}).label != eeg.label
    assert ReadoutSpec("fmri-nsd_fsaverage-vit_b_32", 1, {"roi": "V1d"}, downsample="fsaverage5").label == "V1d@fsaverage5"


def test_synth_root_command_writes_a_loadable_root(tmp_path, capsys):
    root = tmp_path / "root"
    code = main(["synth-root", str(root), "--models", "fmri-nsd-fwrf", "--subjects", "2",
                 "--rois", "V2", "ventral", "--fwrf-voxels", "5", "--no-backbone"])
    assert code == 0
    assert "synthetic BERG root written" in capsys.readouterr().out
    for roi in ("V2", "ventral"):
        for rel in families.weight_files("fmri-nsd-fwrf", 2, roi) + [families.metadata_file("fmri-nsd-fwrf", 2, roi)]:
            assert (root / rel).is_file(), rel
    from berg_scale.models import ModelSet

    ms = ModelSet(str(root), [ReadoutSpec("fmri-nsd-fwrf", 2, {"roi": "ventral"})], device="cpu")
    assert ms.columns[0].shape == (5,)
    assert main(["synth-root", str(root), "--models", "fmri-nsd-fwrf", "--subjects", "9"]) == 2
