"""Weight files are untrusted: pickles that would run code are refused before they do."""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import shutil

import numpy as np
import pytest
import torch

from berg_scale.errors import UnsafeFileError
from berg_scale.models import ModelSet, ReadoutSpec, families
from berg_scale.models import safe_load, store


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_object_npy(path, payload_pickle: bytes) -> None:
    """An .npy holding a 0-d object array whose pickle bytes we control."""
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(
            handle, {"descr": "|O", "fortran_order": False, "shape": ()}
        )
        handle.write(payload_pickle)


def test_crafted_npy_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights_subject-01.npy"
    np.save(path, np.array({"scaler_param": _RunsCode(str(marker))}, dtype=object), allow_pickle=True)
    with open(path, "rb") as handle, pytest.raises(UnsafeFileError) as info:
        safe_load.load_npy(handle, str(path))
    assert str(path) in str(info.value)
    assert "posix.system" in str(info.value) or "os.system" in str(info.value)
    assert not marker.exists()


def test_crafted_pt_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "weights_sub-01_roi-V1.pt"
    torch.save({"stim_mean": np.zeros((1, 3, 1, 1), np.float32), "best_params": _RunsCode(str(marker))}, path)
    with pytest.raises(UnsafeFileError) as info:
        safe_load.load_checkpoint(str(path), str(path))
    assert str(path) in str(info.value)
    assert "system" in str(info.value)
    assert not marker.exists()


def test_crafted_file_inside_a_root_is_refused_by_modelset(berg_root, tmp_path):
    """End to end: a poisoned checkpoint in a BERG root never executes."""
    root = tmp_path / "root"
    rel = families.weight_files("fmri-nsd-fwrf", 1, "V1")[0]
    (root / rel).parent.mkdir(parents=True)
    marker = tmp_path / "pwned"
    torch.save({"stim_mean": np.zeros((1, 3, 1, 1), np.float32), "x": _RunsCode(str(marker))}, root / rel)
    with pytest.raises(UnsafeFileError, match="weights_sub-01_roi-V1.pt"):
        ModelSet(str(root), [ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"})], device="cpu")
    assert not marker.exists()


def test_numpy1_pickle_names_are_accepted(tmp_path):
    """Files written by NumPy 1.x name numpy.core.multiarray; both spellings must load."""
    data = {"a": np.arange(4, dtype=np.float32), "n": np.int64(3), "names": ["Fp1", "Oz"]}
    raw = pickle.dumps(np.array(data, dtype=object), protocol=2)
    assert b"numpy._core.multiarray" in raw or b"numpy.core.multiarray" in raw
    raw = raw.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    assert b"numpy.core.multiarray\n" in raw
    path = tmp_path / "old.npy"
    _write_object_npy(path, raw)
    with open(path, "rb") as handle:
        loaded = safe_load.load_npy(handle, str(path))
    np.testing.assert_array_equal(loaded["a"], data["a"])
    assert loaded["n"] == 3 and loaded["names"] == ["Fp1", "Oz"]


def test_checkpoint_with_namespace_and_numpy_loads_inertly(berg_root):
    """Synthetic checkpoints carry argparse.Namespace and NumPy objects, like BERG's."""
    path = berg_root / families.weight_files("fmri-nsd-fwrf", 1, "V1")[0]
    trusting = torch.load(path, map_location="cpu", weights_only=False)
    assert isinstance(trusting["args."], argparse.Namespace)
    assert isinstance(trusting["stim_mean"], np.ndarray)
    safe = safe_load.load_checkpoint(str(path), str(path))
    assert isinstance(safe["args."], safe_load.InertObject)
    assert safe["args."].state["trunk_width"] == 64
    assert isinstance(safe["trn_hist"][0], np.floating)
    np.testing.assert_array_equal(safe["stim_mean"], trusting["stim_mean"])
    assert torch.equal(safe["best_params"]["enc"]["mu"], trusting["best_params"]["enc"]["mu"])


def test_codecs_encode_is_limited_to_latin1():
    with pytest.raises(UnsafeFileError):
        safe_load._latin1_encode("x", "rot13")
    assert safe_load._latin1_encode("\xff", "latin1") == b"\xff"


def test_each_weight_file_is_hashed_once(berg_root, tmp_path):
    root = tmp_path / "copy"
    rel = families.weight_files("fmri-nsd-fwrf", 1, "V1")[0]
    (root / rel).parent.mkdir(parents=True)
    shutil.copy(berg_root / rel, root / rel)
    before = store.hash_computations
    spec = ReadoutSpec("fmri-nsd-fwrf", 1, {"roi": "V1"})
    first = ModelSet(str(root), [spec], device="cpu")
    second = ModelSet(str(root), [spec], device="cpu")
    assert first.weight_hashes == second.weight_hashes
    assert first.fingerprint == second.fingerprint
    assert first.weight_hashes[rel] == hashlib.sha256((root / rel).read_bytes()).hexdigest()
    assert store.hash_computations - before == 1
    # Changing the file (size/mtime) invalidates the cached hash and the fingerprint.
    with open(root / rel, "ab") as handle:
        handle.write(b"\0")
    third = ModelSet.__new__(ModelSet)
    third.__dict__.update(first.__dict__, _hashes=None)
    assert third.weight_hashes[rel] != first.weight_hashes[rel]
