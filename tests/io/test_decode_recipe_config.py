"""The run config carries the whole decode recipe to the decoders."""

from __future__ import annotations

import numpy as np
import pytest

from berg_scale.config import load_config
from berg_scale.errors import ConfigError
from berg_scale.io.batch_decode_cpu import decode_batch_cpu
from berg_scale.io.image_decode import DecodeOptions, decode_with
from berg_scale.synthetic.shards import encode, synthetic_image


def _config(**input_fields):
    return load_config({
        "input": {"shards": "/tmp/x", **input_fields}, "berg_root": "/tmp/root",
        "readouts": [{"model": "fmri-nsd-fwrf", "subjects": [1], "rois": ["V1"]}], "output": "/tmp/out",
    })


def test_every_recipe_field_reaches_the_decode_options():
    config = _config(image_size=64, crop="none", alpha="drop", resample="lanczos", jpeg_draft=True,
                     max_pixels=1000)
    assert config.input.decode_options() == DecodeOptions(
        size=64, crop="none", max_pixels=1000, alpha="drop", resample="lanczos", jpeg_draft=True)


def test_defaults_keep_the_fingerprint_of_outputs_made_before_the_fields_existed():
    import hashlib
    import json

    config = _config(image_size=64)
    before = {"input": {"image_size": 64, "crop": "center"},
              "readouts": [r.model_dump(mode="json") for r in config.readouts], "precision": "fp32"}
    expected = hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()
    assert config.input_fingerprint() == expected
    assert _config(image_size=64, jpeg_draft=True).input_fingerprint() != expected


def test_a_bad_recipe_value_is_one_line_naming_the_field():
    with pytest.raises(ConfigError, match="input.resample"):
        _config(resample="nearest")


def test_jpeg_draft_from_the_options_changes_the_batch_like_the_single_image_path():
    photo = encode(synthetic_image(np.random.default_rng(0), 800, 600), "jpg")
    options = DecodeOptions(size=64, jpeg_draft=True)
    batch = decode_batch_cpu([photo], options).images[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(batch, decode_with(photo, options))
    plain = decode_batch_cpu([photo], DecodeOptions(size=64)).images[0].permute(1, 2, 0).numpy()
    assert not np.array_equal(batch, plain)  # the draft scale really was used
