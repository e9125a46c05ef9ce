"""BodyPoseNet graph, saved-model checks, masked L2 loss and the soft-start annealing schedule."""

import math

import numpy as np
import pytest

from bpnet.errors import BpnetError
from bpnet.losses import bpnet_loss_np, masked_l2_np
from bpnet.lr_schedule import check_schedule, learning_rate_at, soft_start_annealing_lr
from bpnet.specs import LRScheduleSpec, ModelSpec
from tests.numeric import assert_close_to_scale


def tiny_model_spec(**fields):
    return ModelSpec(**{"backbone_width": 0.125, "stages": 2, **fields})


# ---------------------------------------------------------------- loss (numpy reference)

ONE = np.ones((1, 2, 2, 1), np.float32)


@pytest.mark.parametrize("prediction, target, mask, expected", [
    (ONE, ONE, ONE, 0.0),                          # perfect prediction
    (ONE * 3, ONE, ONE, 0.5 * 4 * 2 ** 2),         # 4 cells, error 2 each
    (ONE * 3, ONE, ONE * 0, 0.0),                  # everything masked
    (ONE * 3, ONE, np.array([1, 0, 0, 0], np.float32).reshape(1, 2, 2, 1), 0.5 * 4),  # one cell counts
    (np.ones((1, 2, 2, 3)), np.zeros((1, 2, 2, 3)), ONE, 0.5 * 12),  # mask broadcasts over channels
    (ONE * 2, ONE, ONE * 0.5, 0.5 * 4 * 0.5),      # fractional mask weighs the squared error
])
def test_masked_l2_table(prediction, target, mask, expected):
    assert masked_l2_np(prediction, target, mask) == pytest.approx(expected)


def test_total_loss_sums_stages_and_divides_by_batch():
    rng = np.random.default_rng(0)
    heat, paf = rng.random((2, 3, 3, 19)), rng.random((2, 3, 3, 38))
    mask = np.ones((2, 3, 3, 1))
    zeros = [np.zeros_like(heat), np.zeros_like(paf)]
    per_stage = (0.5 * np.sum(heat ** 2) + 0.5 * np.sum(paf ** 2)) / 2
    assert bpnet_loss_np(zeros, heat, paf, mask) == pytest.approx(per_stage)
    assert bpnet_loss_np(zeros * 3, heat, paf, mask) == pytest.approx(3 * per_stage)
    # An exact last stage adds nothing.
    assert bpnet_loss_np(zeros + [heat, paf], heat, paf, mask) == pytest.approx(per_stage)


def test_loss_rejects_unpaired_outputs():
    with pytest.raises(ValueError, match="per stage"):
        bpnet_loss_np([np.zeros((1, 1, 1, 19))], np.zeros((1, 1, 1, 19)), np.zeros((1, 1, 1, 38)),
                      np.ones((1, 1, 1, 1)))


@pytest.mark.slow
def test_tensorflow_loss_matches_numpy_reference():
    import tensorflow as tf

    from bpnet.losses import bpnet_loss

    rng = np.random.default_rng(1)
    heat, paf = rng.random((3, 4, 5, 19), np.float32), rng.random((3, 4, 5, 38), np.float32)
    mask = (rng.random((3, 4, 5, 1)) > 0.3).astype(np.float32)
    outputs = [rng.random(a.shape, np.float32) for a in (heat, paf, heat, paf)]
    total, terms = bpnet_loss([tf.constant(o) for o in outputs], heat, paf, mask)
    assert float(total) == pytest.approx(bpnet_loss_np(outputs, heat, paf, mask), rel=1e-5)
    assert sorted(terms) == ["stage1_heatmaps", "stage1_pafs", "stage2_heatmaps", "stage2_pafs"]
    assert float(sum(terms.values())) == pytest.approx(float(total), rel=1e-6)


# ---------------------------------------------------------------- learning-rate schedule

BASE, MIN = 1e-3, 1e-6


@pytest.mark.parametrize("progress, expected", [
    (0.0, MIN),                        # soft start begins at the minimum
    (0.05, math.sqrt(BASE * MIN)),     # half-way up the ramp = geometric mean (log-linear)
    (0.1, BASE), (0.3, BASE), (0.5, BASE),
    (0.75, math.sqrt(BASE * MIN)),     # half-way down the annealing
    (1.0, MIN),
    (1.5, MIN), (-1.0, MIN),           # clamped
])
def test_soft_start_annealing_table(progress, expected):
    lr = soft_start_annealing_lr(progress, BASE, MIN, soft_start=0.1, annealing=0.5)
    assert lr == pytest.approx(expected, rel=1e-9)


def test_schedule_is_monotonic_on_each_ramp():
    lrs = [soft_start_annealing_lr(p / 100, BASE, MIN, 0.2, 0.6) for p in range(101)]
    assert all(a <= b for a, b in zip(lrs[:21], lrs[1:21]))
    assert all(a >= b for a, b in zip(lrs[60:], lrs[61:]))


def test_schedule_without_soft_start_or_annealing_is_constant():
    assert {soft_start_annealing_lr(p / 10, BASE, MIN, 0.0, 1.0) for p in range(11)} == {BASE}


def test_zero_minimum_gives_linear_ramps():
    assert soft_start_annealing_lr(0.05, BASE, 0.0, 0.1, 0.5) == pytest.approx(BASE / 2)
    assert soft_start_annealing_lr(1.0, BASE, 0.0, 0.1, 0.5) == 0.0


def test_learning_rate_at_uses_the_step_fraction():
    schedule = LRScheduleSpec(base_learning_rate=BASE, min_learning_rate=MIN, soft_start=0.1,
                              annealing=0.5)
    assert learning_rate_at(0, 100, schedule) == pytest.approx(MIN)
    assert learning_rate_at(30, 100, schedule) == pytest.approx(BASE)


@pytest.mark.parametrize("fields, match", [
    ({"soft_start": 0.6, "annealing": 0.5}, "soft_start"),
    ({"base_learning_rate": 1e-5, "min_learning_rate": 1e-3}, "min_learning_rate"),
])
def test_inconsistent_schedule_is_a_clear_error(fields, match):
    with pytest.raises(BpnetError, match=match):
        check_schedule(LRScheduleSpec(**fields))


# ---------------------------------------------------------------- model graph

@pytest.mark.slow
@pytest.mark.parametrize("stages", [2, 3, 4, 5, 6, 7])
def test_output_shapes_for_every_stage_count(stages):
    from bpnet.model import build_model, num_stages

    model = build_model(tiny_model_spec(stages=stages))
    assert num_stages(model) == stages
    assert model.output_names == [f"stage{k}_{kind}" for k in range(1, stages + 1)
                                  for kind in ("heatmaps", "pafs")]
    for h, w in [(64, 64), (96, 128)] if stages in (2, 7) else [(64, 96)]:
        outputs = model(np.zeros((1, h, w, 3), np.float32))
        assert [tuple(o.shape) for o in outputs] == [(1, h // 8, w // 8, c) for _ in range(stages)
                                              for c in (19, 38)]


@pytest.mark.slow
def test_layer_names_width_and_regularizer():
    import tensorflow as tf

    from bpnet.model import build_model

    model = build_model(tiny_model_spec(stages=2, regularization_type="l2",
                                        kernel_regularization_factor=1e-3), input_hw=(64, 64))
    assert model.input.name.startswith("input") and tuple(model.input.shape) == (None, None, None, 3)
    names = {layer.name for layer in model.layers}
    assert {"block1_conv1", "block4_conv2", "interface_conv4_4", "stage1_heat_conv4",
            "stage2_paf_conv3", "stage2_concat", "stage2_heatmaps"} <= names
    assert model.get_layer("block1_conv1").filters == 8          # 64 * 0.125
    assert model.get_layer("block4_conv2").filters == 64         # 512 * 0.125
    assert model.get_layer("stage2_pafs").filters == 38          # outputs never scaled
    assert model.get_layer("stage2_concat").output.shape[-1] == 16 + 19 + 38
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    assert all(isinstance(c.kernel_regularizer, tf.keras.regularizers.L2) for c in convs)
    assert len(model.losses) == len(convs)


@pytest.mark.slow
def test_batch_norm_and_no_regularizer_options():
    import tensorflow as tf

    from bpnet.model import build_model

    model = build_model(tiny_model_spec(use_batch_norm=True, regularization_type="none"))
    assert model.get_layer("block1_conv1_bn") is not None
    assert model.get_layer("block1_conv1").use_bias is False
    assert model.losses == []
    assert isinstance(model.get_layer("block1_conv1_relu"), tf.keras.layers.ReLU)


@pytest.mark.parametrize("input_hw", [(60, 64), (64, 0), (100, 100)])
def test_input_size_must_be_a_multiple_of_8(input_hw):
    from bpnet.model import build_model

    with pytest.raises(BpnetError, match="multiples of 8"):
        build_model(tiny_model_spec(), input_hw=input_hw)


# ---------------------------------------------------------------- saved models

@pytest.fixture(scope="module")
def saved_tiny_model(tmp_path_factory):
    from bpnet.model import build_model, save_model

    path = tmp_path_factory.mktemp("model") / "tiny.hdf5"
    model = build_model(tiny_model_spec(stages=3))
    save_model(model, path)
    return model, path


@pytest.mark.slow
def test_save_and_load_round_trip(saved_tiny_model):
    from bpnet.model import count_params, load_model, num_stages

    model, path = saved_tiny_model
    loaded = load_model(path)
    assert num_stages(loaded) == 3 and count_params(loaded) == count_params(model)
    x = np.random.default_rng(0).random((1, 64, 64, 3), np.float32)
    for a, b in zip(model(x), loaded(x)):
        assert_close_to_scale(b, a, 1e-6)


@pytest.mark.slow
def test_stage_model_truncates_and_renames(saved_tiny_model):
    from bpnet.model import stage_model

    model, _ = saved_tiny_model
    x = np.random.default_rng(0).random((2, 64, 96, 3), np.float32)
    full = model(x)
    for stage in (1, 2, None):
        sub = stage_model(model, stage)
        assert sub.output_names == ["heatmaps", "pafs"]
        heat, paf = sub(x)
        k = 3 if stage is None else stage
        assert_close_to_scale(heat, full[2 * k - 2], 1e-6)
        assert_close_to_scale(paf, full[2 * k - 1], 1e-6)
    names = {layer.name for layer in stage_model(model, 1).layers}
    assert not any(n.startswith(("stage2", "stage3")) for n in names)
    with pytest.raises(BpnetError, match="1..3"):
        stage_model(model, 4)


@pytest.mark.slow
def test_load_model_errors_are_clear(tmp_path):
    import tensorflow as tf

    from bpnet.model import load_model, save_model

    with pytest.raises(BpnetError, match="not found"):
        load_model(tmp_path / "missing.hdf5")
    text = tmp_path / "notes.hdf5"
    text.write_text("not a model")
    with pytest.raises(BpnetError, match="not a Keras HDF5"):
        load_model(text)
    other = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2, name="dense")])
    save_model(other, tmp_path / "dense.hdf5")
    with pytest.raises(BpnetError, match="not a BodyPoseNet"):
        load_model(tmp_path / "dense.hdf5")


@pytest.mark.slow
def test_truncated_file_is_a_clear_error(saved_tiny_model, tmp_path):
    from bpnet.model import load_model

    _, path = saved_tiny_model
    broken = tmp_path / "broken.hdf5"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(BpnetError, match="broken.hdf5"):
        load_model(broken)


@pytest.mark.slow
def test_with_regularizer_keeps_weights_and_follows_spec(saved_tiny_model):
    import tensorflow as tf

    from bpnet.model import with_regularizer

    model, _ = saved_tiny_model
    rebuilt = with_regularizer(model, tiny_model_spec(regularization_type="l2",
                                                      kernel_regularization_factor=0.01))
    assert isinstance(rebuilt.get_layer("block1_conv1").kernel_regularizer,
                      tf.keras.regularizers.L2)
    for a, b in zip(model.get_weights(), rebuilt.get_weights()):
        np.testing.assert_array_equal(a, b)
    none = with_regularizer(model, tiny_model_spec(regularization_type="none"))
    assert none.losses == []


@pytest.mark.slow
def test_transfer_weights_by_name_and_shape():
    from bpnet.model import build_model, transfer_weights

    donor = build_model(tiny_model_spec(stages=2))
    same_width = build_model(tiny_model_spec(stages=3))
    matched, skipped = transfer_weights(donor, same_width)
    assert "block1_conv1" in matched and "stage2_heatmaps" in matched
    assert all(name.startswith("stage3") for name in skipped) and skipped
    np.testing.assert_array_equal(same_width.get_layer("stage1_pafs").get_weights()[0],
                                  donor.get_layer("stage1_pafs").get_weights()[0])
    wider = build_model(tiny_model_spec(backbone_width=0.25))
    matched, _ = transfer_weights(donor, wider)
    assert matched == []
