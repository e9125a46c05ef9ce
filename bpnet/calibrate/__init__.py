"""INT8 post-training calibration of an exported ONNX graph.

One pass over the calibration images records, for every activation tensor of the graph, its
min/max and a 2048-bin histogram of |x|. From those, a calibrator picks each tensor's clipping
threshold `amax`:
- `entropy`: TensorRT's EntropyCalibration2 meaning: the threshold whose 128-level quantised
  distribution is closest (KL divergence) to the clipped reference distribution;
- `minmax`: the largest |x| seen;
- `percentile`: the given percentile of |x| (default 99.99).
The thresholds are written as a TensorRT calibration cache (scale = amax / 127, tensor names =
ONNX tensor names, so TensorRT 8-10 can build an engine from the same ONNX without
recalibrating) and turned into Q/DQ ONNX models:
- `ort` target: activations uint8 asymmetric over the calibrated range, weights int8 per channel
  (U8S8, the fast path of ONNX Runtime on CPU);
- `tensorrt` target: activations and weights int8 symmetric (what TensorRT >= 11 needs, since
  it only builds INT8 from explicit Q/DQ).

The calibration images are preprocessed once into a tensor file (.npy, NHWC float32) that later
runs reuse, as TAO's `--cal_data_file` does.

Before calibrating, `equalize` rescales the inputs of each channel Concat of the float graph to one
range (same outputs), so the one scale a Concat gives its inputs does not round small ones away
(the PAFs and heatmaps an OpenPose stage passes on next to +-36 backbone features).

Modules: `stats` (histograms and thresholds, numpy), `graph_stats` (the pass over an ONNX graph),
`equalize` (concat inputs), `trt_cache` (TensorRT cache text), `tensor_file` (the preprocessed
images), `qdq` (Q/DQ models).
The names below are re-exported so `from bpnet import calibrate; calibrate.calibrate_onnx(...)`
reads as one verb; new code may import from the submodules directly.
"""

from bpnet.calibrate.equalize import equalize_concat_inputs, equalize_onnx_file
from bpnet.calibrate.graph_stats import activation_tensor_names, calibrate_onnx, collect_stats
from bpnet.calibrate.qdq import QDQ_TARGETS, output_layers, write_qdq_onnx
from bpnet.calibrate.stats import (Calibration, TensorStats, asymmetric_range, calibration_from_stats,
                                   entropy_threshold_bins, percentile_amax, tensor_amax)
from bpnet.calibrate.tensor_file import build_calibration_tensor, calibration_tensor, load_calibration_tensor
from bpnet.calibrate.trt_cache import (format_trt_cache, parse_trt_cache, read_trt_cache, trt_version_tag,
                                       write_trt_cache)
from bpnet.limits import CALIBRATORS, DEFAULT_PERCENTILE

__all__ = ["CALIBRATORS", "DEFAULT_PERCENTILE", "QDQ_TARGETS", "Calibration", "TensorStats",
           "activation_tensor_names", "asymmetric_range", "build_calibration_tensor", "calibrate_onnx",
           "calibration_from_stats", "calibration_tensor", "collect_stats", "entropy_threshold_bins",
           "equalize_concat_inputs", "equalize_onnx_file",
           "format_trt_cache", "load_calibration_tensor", "output_layers", "parse_trt_cache",
           "percentile_amax", "read_trt_cache", "tensor_amax", "trt_version_tag", "write_qdq_onnx",
           "write_trt_cache"]
