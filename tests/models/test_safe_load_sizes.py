"""Weight files whose headers or pickles claim more bytes than they hold are refused by name.

Without the checks, NumPy or torch would try to allocate what the file claims (terabytes)
and fail with a MemoryError that names no file, or get the process killed.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile

import numpy as np
import pytest
import torch

from berg_scale.cli import main
from berg_scale.errors import BergScaleError, UnsafeFileError
from berg_scale.models import families, safe_load
from berg_scale.models.store import WeightStore

TERA = 10**12


def _npy_with_header(path, descr: str, shape: tuple, payload: bytes) -> None:
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, {"descr": descr, "fortran_order": False, "shape": shape})
        handle.write(payload)


def _load_npy(path):
    with open(path, "rb") as handle:
        return safe_load.load_npy(handle, str(path))


def test_npy_header_claiming_a_trillion_values_is_refused_by_name(tmp_path):
    path = tmp_path / "metadata_sub-01_roi-V1.npy"
    _npy_with_header(path, "<f4", (TERA,), b"\0" * 64)
    with pytest.raises(BergScaleError) as info:
        _load_npy(path)
    message = str(info.value)
    assert str(path) in message
    assert "header promises" in message and "64 bytes" in message and "re-download" in message


def test_truncated_npy_is_refused_before_reading(tmp_path):
    path = tmp_path / "weights.npy"
    np.save(path, np.arange(1000, dtype=np.float64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 8])
    with pytest.raises(BergScaleError, match="truncated or damaged") as info:
        _load_npy(path)
    assert str(path) in str(info.value)


def test_object_npy_header_claiming_more_objects_than_bytes_is_refused(tmp_path):
    path = tmp_path / "metadata_subject-01.npy"
    _npy_with_header(path, "|O", (TERA,), pickle.dumps(np.array({"a": 1}, dtype=object), protocol=2))
    with pytest.raises(BergScaleError, match="pickled objects") as info:
        _load_npy(path)
    assert str(path) in str(info.value)


def test_pickle_reconstructing_a_huge_array_is_refused(tmp_path):
    """The pickle itself (not the header) asks `_reconstruct` for 10^12 float64s."""
    raw = pickle.dumps(np.zeros(3), protocol=2)
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
    assert ("BININT1", 0) in ops  # numpy pickles reconstruct from shape (0,)
    crafted = raw.replace(b"K\x00\x85", b"\x8a\x06" + TERA.to_bytes(6, "little") + b"\x85", 1)
    assert crafted != raw
    path = tmp_path / "crafted.npy"
    _npy_with_header(path, "|O", (), crafted)
    with pytest.raises(BergScaleError, match="asks for an array of shape") as info:
        _load_npy(path)
    assert str(path) in str(info.value)


def test_pickle_calling_ndarray_directly_is_refused(tmp_path):
    class _Allocates:
        def __reduce__(self):
            return (np.ndarray, ((TERA,),))

    path = tmp_path / "crafted.npy"
    _npy_with_header(path, "|O", (), pickle.dumps(_Allocates(), protocol=2))
    with pytest.raises(UnsafeFileError, match="numpy.ndarray directly") as info:
        _load_npy(path)
    assert str(path) in str(info.value)


def test_pickle_asking_for_a_huge_bytearray_is_refused(tmp_path):
    class _Allocates:
        def __reduce__(self):
            return (bytearray, (TERA,))

    path = tmp_path / "crafted.npy"
    _npy_with_header(path, "|O", (), pickle.dumps(_Allocates(), protocol=2))
    with pytest.raises(BergScaleError, match="bytearray") as info:
        _load_npy(path)
    assert str(path) in str(info.value)


def test_real_object_npy_still_loads_through_the_store(tmp_path):
    rel = "meta/metadata_subject-01.npy"
    (tmp_path / "meta").mkdir()
    data = {"fmri": {"ncsnr": np.linspace(0, 1, 50, dtype=np.float32)}, "names": ["V1", "V2"]}
    np.save(tmp_path / rel, np.array(data, dtype=object), allow_pickle=True)
    loaded = WeightStore(str(tmp_path)).load(rel, "metadata")
    np.testing.assert_array_equal(loaded["fmri"]["ncsnr"], data["fmri"]["ncsnr"])


def test_oversized_header_read_through_the_store_names_the_file(tmp_path):
    rel = "meta/metadata_sub-01_roi-V1.npy"
    (tmp_path / "meta").mkdir()
    _npy_with_header(tmp_path / rel, "<f8", (TERA, 3), b"")
    with pytest.raises(BergScaleError, match="metadata_sub-01_roi-V1.npy"):
        WeightStore(str(tmp_path)).load(rel, "metadata")


def test_plan_reports_an_oversized_metadata_header_as_one_line(tmp_path, capsys):
    import yaml

    root = tmp_path / "root"
    rel = families.metadata_file("fmri-nsd-fwrf", 1, "V1")
    (root / rel).parent.mkdir(parents=True)
    _npy_with_header(root / rel, "<f4", (TERA,), b"\0" * 16)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"shards": str(tmp_path / "shards")},
        "berg_root": str(root),
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}],
        "output": str(tmp_path / "out"),
    }))
    code = main(["plan", str(config), "--images", "10", "--berg-root", str(root)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert rel.rsplit("/", 1)[-1] in err and "re-download" in err


# --------------------------------------------------------------------------- .pt


def _legacy_checkpoint(numel_bytes: bytes | None = None) -> bytes:
    """A legacy (non-zip) torch.save file whose one storage claims `numel_bytes` elements."""
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(10)}, buf, _use_new_zipfile_serialization=False)
    data = buf.getvalue()
    if numel_bytes is None:
        return data
    crafted = data.replace(b"cpuq\x06K\nNtq", b"cpuq\x06" + numel_bytes + b"Ntq", 1)
    assert crafted != data
    return crafted


@pytest.mark.parametrize("numel", [
    b"J" + (2**30).to_bytes(4, "little"),  # 1 G elements: would allocate 4 GiB first
    b"\x8a\x06" + TERA.to_bytes(6, "little"),
])
def test_legacy_checkpoint_claiming_huge_storages_is_refused(numel):
    source = "s3://bucket/root/weights_sub-01_roi-V1.pt"
    with pytest.raises(BergScaleError, match="declares storages") as info:
        safe_load.load_checkpoint(io.BytesIO(_legacy_checkpoint(numel)), source)
    assert source in str(info.value)


def test_legacy_checkpoint_with_honest_sizes_loads():
    checkpoint = safe_load.load_checkpoint(io.BytesIO(_legacy_checkpoint()), "ok.pt")
    assert checkpoint["w"].shape == (10,)


def _zip_checkpoint() -> bytes:
    buf = io.BytesIO()
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, buf)
    return buf.getvalue()


def test_zip_checkpoint_with_a_short_record_is_refused_by_name():
    data = _zip_checkpoint()
    source = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as target:
        for name in source.namelist():
            body = source.read(name)
            target.writestr(name, body[:100] if name.endswith("/data/0") else body)
    with pytest.raises(BergScaleError, match="short.pt"):
        safe_load.load_checkpoint(io.BytesIO(out.getvalue()), "short.pt")


def test_zip_checkpoint_whose_directory_points_past_the_end_is_refused():
    data = bytearray(_zip_checkpoint())
    # Enlarge the sizes of the last central-directory entry's record beyond the file.
    central = data.rfind(b"PK\x01\x02")
    assert central > 0
    data[central + 20: central + 24] = (2**31).to_bytes(4, "little")  # compressed size
    data[central + 24: central + 28] = (2**31).to_bytes(4, "little")  # uncompressed size
    with pytest.raises(BergScaleError, match="past.pt"):
        safe_load.load_checkpoint(io.BytesIO(bytes(data)), "past.pt")


def test_zip_checkpoint_cut_in_half_is_refused_by_name(tmp_path):
    path = tmp_path / "weights_sub-01_roi-V1.pt"
    data = _zip_checkpoint()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BergScaleError, match="weights_sub-01_roi-V1.pt"):
        safe_load.load_checkpoint(str(path), str(path))
