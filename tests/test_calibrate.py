"""INT8 calibration: the maths (numpy, fast), the TensorRT cache format, the tensor file and the
Q/DQ model on a tiny exported BodyPoseNet."""

import struct

import numpy as np
import pytest

from bpnet import calibrate
from bpnet.calibrate import tensor_file
from bpnet.errors import BpnetError


def reference_entropy_bins(counts, levels=128):
    """The documented EntropyCalibration2 loop, written plainly (one candidate at a time)."""
    hist = np.array(counts, dtype=np.float64)
    hist[0] = hist[1]
    best, best_kl = len(hist), np.inf
    for i in range(levels, len(hist) + 1):
        p = hist[:i].copy()
        p[-1] += hist[i:].sum()
        group = (np.arange(i) * levels) // i
        q = np.zeros(i)
        for g in range(levels):
            members = (group == g) & (hist[:i] > 0)
            if members.any():
                q[members] = hist[:i][members].sum() / members.sum()
        if np.any((p > 0) & (q == 0)):
            continue
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
        if kl <= best_kl + 1e-12:
            best, best_kl = i, min(kl, best_kl)
    return best


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_entropy_equals_the_plain_loop(seed):
    rng = np.random.default_rng(seed)
    values = np.abs(np.concatenate([rng.laplace(size=20000), rng.normal(0, 8, size=50)]))
    counts = np.histogram(values, bins=512, range=(0, values.max()))[0]
    assert calibrate.entropy_threshold_bins(counts) == reference_entropy_bins(counts)


def test_entropy_of_a_tensor_never_near_zero_warns_nothing():
    # An image input (0..255 pixels, none dark) leaves the first bins empty: candidates there
    # keep no mass, their divergence is infinite - without numpy's divide-by-zero warning.
    import warnings

    rng = np.random.default_rng(0)
    values = rng.uniform(180.0, 255.0, size=50_000)
    counts = np.histogram(values, bins=2048, range=(0, 255.0))[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bins = calibrate.entropy_threshold_bins(counts)
    assert bins == reference_entropy_bins(counts)
    assert bins * 255.0 / 2048 > 180.0          # the threshold keeps the values there are


def test_entropy_clips_rare_outliers_that_minmax_keeps():
    rng = np.random.default_rng(0)
    stats = calibrate.TensorStats()
    values = rng.normal(size=200_000).astype(np.float32)
    values[:5] = 60.0
    stats.observe(values)
    assert calibrate.tensor_amax(stats, "minmax") == pytest.approx(60.0)
    assert 3.0 < calibrate.tensor_amax(stats, "entropy") < 10.0
    assert 3.0 < calibrate.tensor_amax(stats, "percentile", 99.99) < 5.0


def test_histogram_range_doubles_without_losing_counts():
    stats = calibrate.TensorStats(num_bins=16)
    stats.observe(np.full(10, 1.0))
    stats.observe(np.full(5, 3.5))          # exceeds the first range twice: 1 -> 2 -> 4
    assert stats.top == 4.0 and stats.counts.sum() == 15
    assert stats.counts[14] == 5 and stats.counts[3] == 10   # 1.0 was the top bin of [0, 1]
    assert (stats.lo, stats.hi) == (1.0, 3.5)


def test_relu_tensor_gets_a_uint8_range_starting_at_zero():
    stats = calibrate.TensorStats()
    stats.observe(np.maximum(np.random.default_rng(0).normal(size=10000), 0))
    lo, hi = calibrate.asymmetric_range(stats, calibrate.tensor_amax(stats, "entropy"))
    assert lo == 0.0 and 0 < hi <= stats.hi


def test_dead_tensor_still_has_a_positive_scale():
    stats = calibrate.TensorStats()
    stats.observe(np.zeros(100))
    assert calibrate.tensor_amax(stats, "entropy") > 0


def test_cache_text_parses_back_to_the_scales_written(tmp_path):
    scales = {"input": 0.0039215, "model/conv1/Relu:0": 0.125, "pafs": 1.5e-3}
    cal = calibrate.Calibration("entropy", {k: v * 127 for k, v in scales.items()}, {})
    path = tmp_path / "cal.bin"
    calibrate.write_trt_cache(path, cal, version="8.6.1")
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    assert text.splitlines()[3] == "pafs: " + struct.pack(">f", np.float32(1.5e-3)).hex()
    header, parsed = calibrate.read_trt_cache(path)
    assert list(parsed) == list(scales)
    for name, scale in scales.items():
        assert parsed[name] == pytest.approx(scale, rel=1e-6)


def test_version_tags_follow_tensorrt():
    assert calibrate.trt_version_tag("8.6.1") == 8601
    assert calibrate.trt_version_tag((10, 3, 0)) == 100300


def test_broken_cache_is_named(tmp_path):
    bad = tmp_path / "cal.bin"
    bad.write_text("TRT-8601-EntropyCalibration2\ninput: zz\n")
    with pytest.raises(BpnetError, match="line 2"):
        calibrate.read_trt_cache(bad)
    bad.write_text("hello\n")
    with pytest.raises(BpnetError, match="header"):
        calibrate.read_trt_cache(bad)


def test_tensor_file_is_written_once_then_reused(tmp_path, coco_mini, monkeypatch):
    _, images = coco_mini
    data_file = tmp_path / "cal.npy"
    first, reused = calibrate.calibration_tensor((64, 64), 2, 3, images, data_file)
    assert not reused and first.shape == (6, 64, 64, 3) and data_file.is_file()

    def no_preprocessing(*args, **kwargs):
        raise AssertionError("the tensor file exists, images must not be preprocessed again")

    monkeypatch.setattr(tensor_file, "build_calibration_tensor", no_preprocessing)
    second, reused = calibrate.calibration_tensor((64, 64), 2, 3, None, data_file)
    assert reused and np.array_equal(first, second)
    with pytest.raises(BpnetError, match="expected"):
        calibrate.calibration_tensor((64, 96), 2, 3, None, data_file)
    with pytest.raises(BpnetError, match="holds 6 images, fewer than batch_size x batches = 4 x 2 = 8"):
        calibrate.calibration_tensor((64, 64), 4, 2, None, data_file)


def test_too_few_images_is_the_seeds_error(tmp_path, coco_mini):
    _, images = coco_mini
    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(images.iterdir())[:3]:
        (few / path.name).write_bytes(path.read_bytes())
    with pytest.raises(BpnetError, match="holds 3 images, fewer than batch_size x batches = 2 x 2 = 4"):
        calibrate.calibration_tensor((64, 64), 2, 2, few, None)
    with pytest.raises(BpnetError, match="--cal_image_dir"):
        calibrate.calibration_tensor((64, 64), 2, 2, None, None)
