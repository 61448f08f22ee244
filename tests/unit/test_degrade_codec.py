"""The libjpeg quantization table of `dutrain.degrade.codec` against what Pillow writes."""

from __future__ import annotations

import doctest
import io

import numpy as np
from PIL import Image

from dutrain.degrade import codec
from dutrain.degrade.codec import jpeg_bytes, libjpeg_luma_table


def test_doctests():
    assert doctest.testmod(codec).failed == 0


def test_luma_table_equals_pillows_for_every_quality():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    for q in range(1, 101):
        with Image.open(io.BytesIO(jpeg_bytes(img, q))) as im:
            # Pillow reads the DQT segment (zigzag order in the file) back in natural order
            pillow = np.array(im.quantization[0]).reshape(8, 8)
        np.testing.assert_array_equal(libjpeg_luma_table(q), pillow, err_msg=f"quality {q}")


def test_luma_table_is_natural_order_and_clamps_quality():
    assert libjpeg_luma_table(50)[0].tolist() == [16, 11, 10, 16, 24, 40, 51, 61]
    assert libjpeg_luma_table(50)[:, 0].tolist() == [16, 12, 14, 14, 18, 24, 49, 72]
    np.testing.assert_array_equal(libjpeg_luma_table(0), libjpeg_luma_table(1))
    np.testing.assert_array_equal(libjpeg_luma_table(101), libjpeg_luma_table(100))
    assert libjpeg_luma_table(100).max() == 1 and libjpeg_luma_table(1).max() == 255
