import pytest
import torch

from detkd.adapters import FeatureAdapters, check_pairing, level_name
from detkd.errors import PairingError
from detkd.types import FeatureSpec

S = [FeatureSpec(16, 8), FeatureSpec(32, 16), FeatureSpec(64, 32)]
T = [FeatureSpec(32, 8), FeatureSpec(64, 16), FeatureSpec(128, 32)]


def test_adapters_project_student_to_teacher_channels():
    ad = FeatureAdapters(S, T)
    outs = ad([torch.randn(2, s.channels, 64 // s.stride, 64 // s.stride) for s in S])
    assert [o.shape[1] for o in outs] == [t.channels for t in T]
    assert [level_name(s) for s in S] == ["p3", "p4", "p5"]


def test_level_count_mismatch_names_levels():
    with pytest.raises(PairingError, match="student has 3 feature levels .*teacher has 4"):
        check_pairing(S, [FeatureSpec(16, 4), *T])


def test_stride_mismatch_names_the_level():
    with pytest.raises(PairingError, match="level 1: student stride 16 \\(p4\\) != teacher stride 32"):
        check_pairing(S, [T[0], FeatureSpec(64, 32), FeatureSpec(128, 64)])


def test_wrong_input_channels_raise():
    ad = FeatureAdapters(S, T)
    with pytest.raises(ValueError, match="level 0 has 8 channels, expected 16"):
        ad([torch.randn(1, 8, 8, 8), torch.randn(1, 32, 4, 4), torch.randn(1, 64, 2, 2)])
