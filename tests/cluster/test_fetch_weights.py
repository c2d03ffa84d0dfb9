"""fetch-weights against the loopback S3 server: exact file set, skip, resume, repair."""

from __future__ import annotations

import hashlib

import pytest

from berg_scale.cli import main
from berg_scale.errors import BergScaleError, StorageError
from berg_scale.io.storage import StorageOptions, filesystem_for
from berg_scale.weights import fetch_weights, files_for_readouts
from berg_scale.weights.fetch import PART_SUFFIX, fetch_files, load_hashes

from cluster_support import NEEDED, local_files

pytestmark = pytest.mark.s3


def _fetch(remote_root, dest, **kwargs):
    return fetch_weights(
        NEEDED, str(dest), remote_root.storage, bucket=remote_root.url, progress=False, **kwargs
    )


def test_files_for_readouts_lists_weights_and_metadata_once():
    files = files_for_readouts(NEEDED + [("fmri-nsd_fsaverage-vit_b_32", 1, None)])
    assert len(files) == len(set(files))
    # fwRF V1: 1 + 1; lateral: 2 splits + 1 unsplit metadata; each ViT model: 1 + 1.
    assert len(files) == 2 + 3 + 2 + 2
    assert any(f.endswith("weights_sub-01_roi-lateral_split-2.pt") for f in files)
    assert any(f.endswith("metadata_sub-01_roi-lateral.npy") for f in files)


def test_files_for_readouts_rejects_bad_requests():
    with pytest.raises(BergScaleError, match="ROI"):
        files_for_readouts([("fmri-nsd-fwrf", 1, None)])
    with pytest.raises(BergScaleError, match="no ROI 'V9'"):
        files_for_readouts([("fmri-nsd-fwrf", 1, "V9")])
    with pytest.raises(BergScaleError, match="no subject 9"):
        files_for_readouts([("fmri-nsd_fsaverage-vit_b_32", 9, None)])


def test_fetch_downloads_exactly_the_needed_files_then_nothing(remote_root, tmp_path, byte_counter):
    report = _fetch(remote_root, tmp_path)
    assert sorted(report.downloaded) == sorted(remote_root.needed)
    assert local_files(tmp_path) == set(remote_root.needed)
    for rel in remote_root.needed:
        assert (tmp_path / rel).read_bytes() == remote_root.contents[rel]
    needed_bytes = sum(len(remote_root.contents[rel]) for rel in remote_root.needed)
    assert report.bytes_transferred == needed_bytes
    assert sum(byte_counter.values()) == needed_bytes

    byte_counter.clear()
    again = _fetch(remote_root, tmp_path)
    assert again.downloaded == []
    assert sorted(again.skipped) == sorted(remote_root.needed)
    assert sum(byte_counter.values()) == 0


def test_interrupted_download_resumes_from_the_part_file(remote_root, tmp_path, byte_counter):
    rel = remote_root.needed[0]
    data = remote_root.contents[rel]
    prefix = len(data) // 3
    target = tmp_path / rel
    target.parent.mkdir(parents=True)
    (tmp_path / (rel + PART_SUFFIX)).write_bytes(data[:prefix])

    fs, root = filesystem_for(remote_root.url, remote_root.storage)
    report = fetch_files(fs, root, [rel], str(tmp_path), progress=False, chunk_bytes=10_000)

    assert report.files[0].state == "resumed"
    assert byte_counter[rel] == len(data) - prefix
    assert target.read_bytes() == data
    assert not (tmp_path / (rel + PART_SUFFIX)).exists()


def test_part_file_of_another_object_version_is_discarded(remote_root, tmp_path, byte_counter):
    rel = remote_root.needed[0]
    data = remote_root.contents[rel]
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / (rel + PART_SUFFIX)).write_bytes(b"x" * 100)
    (tmp_path / (rel + ".part.json")).write_text('{"size": 5, "etag": "old"}')
    fs, root = filesystem_for(remote_root.url, remote_root.storage)
    report = fetch_files(fs, root, [rel], str(tmp_path), progress=False)
    assert report.files[0].state == "downloaded"
    assert byte_counter[rel] == len(data)
    assert (tmp_path / rel).read_bytes() == data


def test_file_with_wrong_size_is_fetched_again(remote_root, tmp_path):
    _fetch(remote_root, tmp_path)
    rel = remote_root.needed[1]
    (tmp_path / rel).write_bytes(b"truncated")
    report = _fetch(remote_root, tmp_path)
    assert report.downloaded == [rel]
    assert (tmp_path / rel).read_bytes() == remote_root.contents[rel]


def test_sha256_is_checked_when_known(remote_root, tmp_path):
    good = {rel: hashlib.sha256(remote_root.contents[rel]).hexdigest() for rel in remote_root.needed}
    bad_rel = remote_root.needed[2]
    hashes_file = tmp_path / "SHA256SUMS"
    hashes_file.write_text(
        "".join(f"{('0' * 64) if rel == bad_rel else digest}  {rel}\n" for rel, digest in good.items())
    )
    dest = tmp_path / "root"
    with pytest.raises(StorageError, match="sha256"):
        _fetch(remote_root, dest, hashes=load_hashes(str(hashes_file)))
    assert not (dest / bad_rel).exists()
    assert not (dest / (bad_rel + PART_SUFFIX)).exists()

    hashes_file.write_text("".join(f"{digest} *{rel}\n" for rel, digest in good.items()))
    report = _fetch(remote_root, dest, hashes=load_hashes(str(hashes_file)))
    assert all(f.sha256 == good[f.path] for f in report.files if f.state != "present")
    assert local_files(dest) == set(remote_root.needed)


def test_invalid_hashes_file_is_rejected(tmp_path):
    path = tmp_path / "hashes.txt"
    path.write_text("abc  some/file.npy\n")
    with pytest.raises(BergScaleError, match="64 hex digits"):
        load_hashes(str(path))


def test_missing_remote_files_are_named(remote_root, tmp_path):
    with pytest.raises(BergScaleError, match="weights_sub-03_roi-V1.pt"):
        fetch_weights(
            [("fmri-nsd-fwrf", 3, "V1")], str(tmp_path), remote_root.storage,
            bucket=remote_root.url, progress=False,
        )
    assert local_files(tmp_path) == set()


def test_anonymous_access_to_a_private_bucket_is_a_clear_error(remote_root, tmp_path):
    anonymous = StorageOptions(endpoint_url=remote_root.storage.endpoint_url, anon=True)
    with pytest.raises(StorageError, match="credentials"):
        fetch_weights(NEEDED, str(tmp_path), anonymous, bucket=remote_root.url, progress=False)


def test_cli_dry_run_lists_then_fetch_downloads(remote_root, tmp_path, capsys, byte_counter):
    common = [
        "fetch-weights", "--models", "fmri-nsd-fwrf", "--subjects", "1", "--rois", "V1", "lateral",
        "--to", str(tmp_path), "--bucket", remote_root.url,
        "--endpoint-url", remote_root.storage.endpoint_url, "--no-anon", "--no-progress",
    ]
    assert main([*common, "--dry-run", "--backbone"]) == 0
    out = capsys.readouterr().out
    assert "weights_sub-01_roi-lateral_split-1.pt" in out
    assert "5 files" in out and "dry run" in out
    assert "vit_b_32-d86f8d99.pth" in out
    assert sum(byte_counter.values()) == 0 and local_files(tmp_path) == set()

    assert main(common) == 0
    fwrf = [rel for rel in remote_root.needed if "model-fwrf" in rel]
    assert local_files(tmp_path) == set(fwrf)
    assert "5 files fetched" in capsys.readouterr().out


def test_cli_without_readouts_explains(tmp_path, capsys):
    assert main(["fetch-weights", "--to", str(tmp_path)]) == 2
    assert "--models" in capsys.readouterr().err


def test_relative_paths_must_stay_inside_the_root(remote_root, tmp_path):
    fs, root = filesystem_for(remote_root.url, remote_root.storage)
    with pytest.raises(BergScaleError, match="relative"):
        fetch_files(fs, root, ["../escape.npy"], str(tmp_path), progress=False)


def test_cli_fetches_what_a_run_config_reads(remote_root, tmp_path, capsys):
    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"shards": "unused/"},
        "berg_root": str(tmp_path / "root"),
        "readouts": [
            {"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"], "outputs": ["mean"]},
            {"model": "fmri-nsd_fsaverage-vit_b_32", "subjects": [1], "rois": ["hV4", "PPA"]},
        ],
        "output": str(tmp_path / "out"),
    }))
    common = ["fetch-weights", "--config", str(config), "--to", str(tmp_path / "root"),
              "--bucket", remote_root.url, "--endpoint-url", remote_root.storage.endpoint_url,
              "--no-anon", "--no-progress"]
    assert main([*common, "--metadata-only"]) == 0
    metadata = {rel for rel in remote_root.needed if "/metadata/" in rel
                and ("sub-01_roi-V1." in rel or "fsaverage" in rel)}
    assert local_files(tmp_path / "root") == metadata
    assert main(common) == 0
    wanted = files_for_readouts([("fmri-nsd-fwrf", 1, "V1"), ("fmri-nsd_fsaverage-vit_b_32", 1, None)])
    assert local_files(tmp_path / "root") == set(wanted)
    assert "2 files fetched" in capsys.readouterr().out.splitlines()[-1]


def test_known_sha256_catches_a_same_size_corruption(remote_root, tmp_path):
    _fetch(remote_root, tmp_path)
    rel = remote_root.needed[3]
    data = bytearray((tmp_path / rel).read_bytes())
    data[100] ^= 0xFF
    (tmp_path / rel).write_bytes(bytes(data))
    assert _fetch(remote_root, tmp_path).downloaded == []  # size alone cannot tell
    hashes = {r: hashlib.sha256(remote_root.contents[r]).hexdigest() for r in remote_root.needed}
    report = _fetch(remote_root, tmp_path, hashes=hashes)
    assert report.downloaded == [rel]
    assert (tmp_path / rel).read_bytes() == remote_root.contents[rel]


def test_a_local_folder_can_be_the_source(tmp_path):
    source = tmp_path / "berg"
    wanted = files_for_readouts([("fmri-nsd-fwrf", 1, "V1")])
    for index, rel in enumerate(wanted):
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        (source / rel).write_bytes(bytes([index]) * (1000 + index))
    report = fetch_weights([("fmri-nsd-fwrf", 1, "V1")], str(tmp_path / "copy"), bucket=str(source),
                           progress=False)
    assert sorted(report.downloaded) == sorted(wanted)
    for rel in wanted:
        assert (tmp_path / "copy" / rel).read_bytes() == (source / rel).read_bytes()
