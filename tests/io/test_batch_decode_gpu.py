"""The GPU batch path resizes crops of one shape together; results equal one-by-one resizing."""

from __future__ import annotations

import numpy as np
import torch
from torchvision.io import decode_jpeg

from berg_scale.io.batch_decode_gpu import (
    decode_jpeg_batch_gpu,
    resize_batch_tensor,
    resize_square_tensor,
)
from berg_scale.io.image_decode import DecodeOptions
from berg_scale.synthetic.shards import encode, synthetic_image


def test_a_stacked_resize_equals_resizing_each_image():
    rng = np.random.default_rng(0)
    images = [torch.from_numpy(synthetic_image(rng, 90, 60)).permute(2, 0, 1) for _ in range(3)]
    together = resize_batch_tensor(torch.stack([image[:, :, 15:75] for image in images]), 32)
    for image, out in zip(images, together):
        assert torch.equal(out, resize_square_tensor(image, 32, "center"))


def test_mixed_shapes_in_one_chunk_each_get_their_own_resize():
    rng = np.random.default_rng(1)
    items = [encode(synthetic_image(rng, w, h), "jpg") for w, h in ((80, 60), (60, 80), (80, 60), (50, 50))]
    calls = []

    def decoder(data, mode, device):
        calls.append(isinstance(data, list))
        return [decode_jpeg(t, mode=mode) for t in data] if isinstance(data, list) else decode_jpeg(data, mode=mode)

    result = decode_jpeg_batch_gpu(items, "cpu", DecodeOptions(size=24), jpeg_decoder=decoder)
    assert calls == [True]  # one batched decoder call for the whole chunk
    assert result.decoded_on == ["gpu"] * 4
    for i, data in enumerate(items):
        alone = resize_square_tensor(decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8)), 24, "center")
        assert torch.equal(result.images[i], alone)
