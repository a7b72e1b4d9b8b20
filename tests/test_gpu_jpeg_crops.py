"""tools/gpu_jpeg_crops.py without a GPU: its pixel reference (DALI's CPU ROI decode of a JPEG
window) is PIL's decode of the whole image cropped, and its difference figures are right."""
from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
from PIL import Image

from helpers.tools import load_tool


@pytest.fixture(scope="module")
def tool():
    return load_tool("gpu_jpeg_crops")


def test_cpu_reference_equals_pil_crop(tool):
    jpegs = tool.sample_jpegs(4, 200)
    starts = [np.array([y, x], dtype=np.int32) for y, x in ((0, 0), (104, 104), (13, 77), (90, 3))]
    args = argparse.Namespace(batch=2, crop=96, threads=1, repeats=1)
    crops, speed = tool.run_way("cpu_roi_fancy", jpegs, starts, args)
    assert len(crops) == 4 and speed["images_per_sec"] > 0
    for jpeg, (y, x), crop in zip(jpegs, starts, crops):
        whole = np.asarray(Image.open(io.BytesIO(jpeg.tobytes())).convert("RGB"))
        assert whole.shape == (200, 200, 3)
        np.testing.assert_array_equal(crop, whole[y:y + 96, x:x + 96])


def test_differences(tool):
    a = [np.zeros((2, 2, 3), np.uint8), np.full((1, 1, 3), 9, np.uint8)]
    b = [np.ones((2, 2, 3), np.uint8), np.full((1, 1, 3), 2, np.uint8)]
    assert tool.differences(a, b) == {"mean_abs": 4.0, "max_abs": 7}
    assert tool.differences(a, a) == {"mean_abs": 0.0, "max_abs": 0}
