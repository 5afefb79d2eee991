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


def test_level_count_mismatch_names_levels():  # the same-grid check of logit and box KD
    with pytest.raises(PairingError, match="student has 3 feature levels .*teacher has 4"):
        check_pairing(S, [FeatureSpec(16, 4), *T])


def test_stride_mismatch_names_the_level():
    with pytest.raises(PairingError, match="level 1: student stride 16 \\(p4\\) != teacher stride 32"):
        check_pairing(S, [T[0], FeatureSpec(64, 32), FeatureSpec(128, 64)])


def test_wrong_input_channels_raise():
    ad = FeatureAdapters(S, T)
    with pytest.raises(ValueError, match="level 0 has 8 channels, expected 16"):
        ad([torch.randn(1, 8, 8, 8), torch.randn(1, 32, 4, 4), torch.randn(1, 64, 2, 2)])


def test_levels_pair_by_nearest_stride_and_resample():
    from detkd.adapters import describe_pairing, pair_levels, resample_to

    teacher = [FeatureSpec(64, 4), FeatureSpec(96, 8), FeatureSpec(128, 16)]  # a P2-P4 teacher
    assert pair_levels(S, teacher) == [1, 2, 2]
    ad = FeatureAdapters(S, teacher)
    assert [c.out_channels for c in ad.layers] == [96, 128, 128]
    text = describe_pairing(S, teacher, ad.pairs)
    assert "p3 (stride 8, 16 ch) <- teacher p3 (stride 8, 96 ch)" in text
    assert "p5 (stride 32, 64 ch) <- teacher p4 (stride 16, 128 ch, resampled)" in text
    fine = torch.randn(2, 3, 8, 8)
    assert resample_to(fine, (4, 4)).shape == (2, 3, 4, 4)
    torch.testing.assert_close(resample_to(fine, (4, 4)), torch.nn.functional.avg_pool2d(fine, 2))
    assert resample_to(fine, (16, 16)).shape == (2, 3, 16, 16) and resample_to(fine, (8, 8)) is fine


def test_feature_kd_across_strides_while_head_kd_needs_the_same_grid():
    from detkd.config import load_kd_config
    from detkd.losses.composite import KDComposite, KDInputs
    from detkd.types import TeacherOutputs

    teacher = [FeatureSpec(24, 4), FeatureSpec(48, 8), FeatureSpec(96, 16)]
    kw = dict(student_specs=S, teacher_specs=teacher, student_classes=2, teacher_classes=2, student_reg_max=16,
              teacher_reg_max=16)  # fmt: skip
    with pytest.raises(PairingError, match="level 0: student stride 8.*set kd.logit.weight=0 and kd.box.weight=0"):
        KDComposite(load_kd_config(), **kw)
    comp = KDComposite(load_kd_config(None, ["logit.weight=0", "box.weight=0", "feature.method=pkd"]), **kw)
    feats = [torch.randn(2, s.channels, 64 // s.stride, 64 // s.stride, requires_grad=True) for s in S]
    t_feats = [torch.randn(2, t.channels, 64 // t.stride, 64 // t.stride) for t in teacher]
    terms = comp(KDInputs(student_features=feats, student_heads={}, teacher=TeacherOutputs(t_feats, teacher)))
    assert terms.unweighted["kd/feat"] > 0
    terms.total.backward()
    assert all(f.grad is not None for f in feats)
