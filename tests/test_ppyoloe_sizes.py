"""The full-size configurations match PaddleX's published parameter-file sizes (within 5%)."""

import numpy as np
import pytest

from sodd.training.ppyoloe.flops import count
from sodd.training.ppyoloe.model import build_inference

PUBLISHED_MIB = {"PP-YOLOE_plus_SOD-S": 77.29, "PP-YOLOE_plus_SOD-L": 324.93}


@pytest.mark.parametrize("name", sorted(PUBLISHED_MIB))
def test_exported_parameter_file_size(name):
    net = build_inference(name)
    mib = sum(int(np.prod(v.shape)) for v in net.state_dict().values()) * 4 / 2**20
    assert abs(mib / PUBLISHED_MIB[name] - 1) < 0.05, mib


def test_model_info_counts_tiny():
    s = count("sodd-SOD-tiny")
    assert 2.0e6 < s.params < 3.0e6
    assert 0.3e9 < s.macs < 1.0e9
    assert s.exported_mib < 15
