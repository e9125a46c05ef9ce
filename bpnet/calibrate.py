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

The calibration images are preprocessed once into a tensor file that later runs reuse, as TAO's
`--cal_data_file` does: a `.npy` NHWC float32 array, or under any other name TAO's TensorFile
layout (bpnet/tensorfile.py), so a TAO user's existing `.tensorfile` is read as it is.
"""

import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import atomic_path, write_text_atomic

CALIBRATORS = ("entropy", "minmax", "percentile")
NUM_BINS = 2048
NUM_LEVELS = 128              # positive int8 levels; the quantised distribution has this many bins
DEFAULT_PERCENTILE = 99.99
MIN_AMAX = 1e-8               # dead tensors (always 0) still need a positive scale
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
CACHE_ALGORITHMS = {
    # TensorRT checks the header's algorithm against the calibrator reading the cache; it has no
    # percentile calibrator, so percentile thresholds travel under the entropy calibrator's header
    # (the builder then only reads the cache, never recomputes it).
    "entropy": "EntropyCalibration2",
    "percentile": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
}
DEFAULT_TRT_VERSION = (8, 6, 1)   # the TensorRT of TAO 5's deployment containers


# ---------------------------------------------------------------- histogram statistics (numpy)

class TensorStats:
    """Running min, max and a histogram of |x| over [0, top] with a fixed number of bins.

    The first batch fixes `top` to its max |x|; a later batch with larger values doubles `top`
    (merging bin pairs) until it fits, so one pass over the data suffices.
    """

    def __init__(self, num_bins=NUM_BINS):
        self.counts = np.zeros(num_bins, dtype=np.int64)
        self.top = 0.0
        self.lo = np.inf
        self.hi = -np.inf

    @property
    def num_bins(self):
        return self.counts.size

    @property
    def bin_width(self):
        return self.top / self.num_bins

    def observe(self, values):
        values = np.asarray(values, dtype=np.float32).ravel()
        if values.size == 0:
            return
        self.lo = min(self.lo, float(values.min()))
        self.hi = max(self.hi, float(values.max()))
        magnitude = np.abs(values)
        amax = float(magnitude.max())
        if self.top == 0.0:
            if amax == 0.0:
                self.counts[0] += magnitude.size
                return
            self.top = amax
        while amax > self.top:
            self._double_range()
        bins = np.minimum((magnitude * (self.num_bins / self.top)).astype(np.int64), self.num_bins - 1)
        self.counts += np.bincount(bins, minlength=self.num_bins)

    def _double_range(self):
        merged = self.counts.reshape(-1, 2).sum(axis=1)
        self.counts = np.concatenate([merged, np.zeros_like(merged)])
        self.top *= 2.0

    @property
    def abs_max(self):
        return max(abs(self.lo), abs(self.hi)) if np.isfinite(self.lo) else 0.0


def entropy_threshold_bins(counts, num_levels=NUM_LEVELS):
    """Number of histogram bins to keep so that the KL divergence between the clipped reference
    distribution P and its `num_levels`-level quantisation Q is smallest (EntropyCalibration2).

    For each candidate i: P = counts[:i] with the clipped tail counts[i:] added to its last bin;
    Q = counts[:i] merged into `num_levels` groups (bin j -> group j * levels // i), each group's
    mass spread evenly over the group's non-empty bins. Because Q is constant inside a group, the
    divergence needs only per-group sums, which cumulative sums give for all candidates at once:
        KL = (sum_j P_j log P_j - sum_g mass_g log q_g - tail log q_last) / S + log(S_i / S)
    with S the total count and S_i = sum(counts[:i]).
    """
    hist = np.array(counts, dtype=np.float64)
    n = hist.size
    # The spike of exact zeros (every ReLU output) would dominate the first quantisation group
    # and push the threshold down; NVIDIA's reference implementation flattens it the same way.
    if n > 1:
        hist[0] = hist[1]
    if n <= num_levels or hist[num_levels:].sum() == 0:
        last = np.flatnonzero(hist)
        return int(last[-1] + 1) if last.size else n
    cum = np.concatenate([[0.0], np.cumsum(hist)])                      # cum[i] = sum(hist[:i])
    cum_nonzero = np.concatenate([[0], np.cumsum(hist > 0)])
    cum_hlogh = np.concatenate([[0.0], np.cumsum(_xlogx(hist))])
    total = cum[-1]
    cand = np.arange(num_levels, n + 1)                                 # (C,)
    # group g covers bins [ceil(g i / L), ceil((g + 1) i / L))
    starts = -((-np.arange(num_levels + 1)[None, :] * cand[:, None]) // num_levels)   # (C, L+1)
    mass = np.diff(cum[starts], axis=1)                                 # (C, L)
    filled = np.diff(cum_nonzero[starts], axis=1)
    q = np.where(filled > 0, mass / np.maximum(filled, 1), 0.0)
    tail = total - cum[cand]
    last_bin = hist[cand - 1]
    p_last = last_bin + tail
    p_log_p = cum_hlogh[cand - 1] + _xlogx(p_last)
    q_last = q[:, -1]                                                   # bin i-1 is in the last group
    cross = np.sum(_xlogy(mass, q), axis=1) + _xlogy(tail, q_last)
    kl = (p_log_p - cross) / total + np.log(cum[cand] / total)
    # The tail cannot land on an empty last bin: Q has no mass there, the divergence is infinite.
    kl = np.where((tail > 0) & (last_bin == 0), np.inf, kl)
    if not np.isfinite(kl).any():
        return n
    best = cand.size - 1 - int(np.argmin(kl[::-1]))                     # ties: the larger threshold
    return int(cand[best])


def _xlogx(x):
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


def _xlogy(x, y):
    return np.where(x > 0, x * np.log(np.where(y > 0, y, 1.0)), 0.0)


def percentile_amax(counts, bin_width, percentile=DEFAULT_PERCENTILE):
    """Upper edge of the bin where the cumulative share of |x| reaches `percentile` percent."""
    if not 0 < percentile <= 100:
        raise BpnetError(f"--percentile: {percentile} is not in (0, 100]")
    cumulative = np.cumsum(counts)
    if cumulative[-1] == 0:
        return 0.0
    index = int(np.searchsorted(cumulative, cumulative[-1] * percentile / 100.0))
    return (min(index, counts.size - 1) + 1) * bin_width


def tensor_amax(stats, method, percentile=DEFAULT_PERCENTILE):
    """The clipping threshold of one tensor by the chosen calibrator."""
    if stats.top == 0.0:
        return MIN_AMAX
    if method == "minmax":
        amax = stats.abs_max
    elif method == "entropy":
        amax = entropy_threshold_bins(stats.counts) * stats.bin_width
    elif method == "percentile":
        amax = percentile_amax(stats.counts, stats.bin_width, percentile)
    else:
        raise BpnetError(f"--calibrator: {method!r} is not one of {', '.join(CALIBRATORS)}")
    return max(min(amax, stats.abs_max), MIN_AMAX)


def asymmetric_range(stats, amax):
    """(lo, hi) for uint8 activations: the observed range clipped to [-amax, amax], always
    containing 0 (a ReLU output gets [0, amax], so all 256 levels cover real values)."""
    lo = max(min(stats.lo, 0.0), -amax)
    hi = min(max(stats.hi, 0.0), amax)
    if hi - lo < MIN_AMAX:
        hi = lo + MIN_AMAX
    return lo, hi


@dataclass
class Calibration:
    """Per-tensor thresholds (symmetric amax) and asymmetric ranges of one calibrator."""
    method: str
    amax: dict                       # tensor name -> float
    ranges: dict                     # tensor name -> (lo, hi)
    num_images: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def scales(self):
        return {name: a / 127.0 for name, a in self.amax.items()}


def calibration_from_stats(stats_by_tensor, method, percentile=DEFAULT_PERCENTILE, num_images=0):
    if method not in CALIBRATORS:
        raise BpnetError(f"--calibrator: {method!r} is not one of {', '.join(CALIBRATORS)}")
    amax = {name: float(tensor_amax(s, method, percentile)) for name, s in stats_by_tensor.items()}
    ranges = {name: asymmetric_range(s, amax[name]) for name, s in stats_by_tensor.items()}
    return Calibration(method=method, amax=amax, ranges=ranges, num_images=num_images)


# ---------------------------------------------------------------- TensorRT calibration cache

def trt_version_tag(version=None):
    """TensorRT's integer version as it appears in cache headers (8.6.1 -> 8601,
    10.3.0 -> 100300). `version` is a tuple or "x.y.z"; None = the installed TensorRT if any,
    else 8.6.1."""
    if version is None:
        try:
            import tensorrt
            version = tensorrt.__version__
        except ImportError:
            version = DEFAULT_TRT_VERSION
    if isinstance(version, str):
        version = tuple(int(p) for p in version.split(".")[:3] if p.isdigit())
    major, minor, patch = (tuple(version) + (0, 0, 0))[:3]
    if major >= 10:
        return major * 10000 + minor * 100 + patch
    return major * 1000 + minor * 100 + patch


def format_trt_cache(scales, method="entropy", version=None):
    """TensorRT's calibration cache text: a header line then `name: <hex of big-endian float32>`."""
    lines = [f"TRT-{trt_version_tag(version)}-{CACHE_ALGORITHMS[method]}"]
    for name, scale in scales.items():
        lines.append(f"{name}: {struct.pack('>f', float(scale)).hex()}")
    return "\n".join(lines) + "\n"


def parse_trt_cache(text, source="calibration cache"):
    """(header, {tensor name: scale}) of a TensorRT calibration cache text."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        raise BpnetError(f"{source}: first line must be a 'TRT-<version>-<algorithm>' header, "
                         f"got {lines[0][:60] if lines else 'an empty file'!r}")
    scales = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(":")
        value = value.strip()
        if not sep or len(value) != 8:
            raise BpnetError(f"{source} line {number}: expected 'tensor_name: 8 hex digits', got {line!r}")
        try:
            scales[name.strip()] = struct.unpack(">f", bytes.fromhex(value))[0]
        except ValueError:
            raise BpnetError(f"{source} line {number}: {value!r} is not 8 hex digits") from None
    return lines[0], scales


def write_trt_cache(path, calibration, version=None):
    write_text_atomic(path, format_trt_cache(calibration.scales(), calibration.method, version))


def read_trt_cache(path):
    path = Path(path)
    if not path.is_file():
        raise BpnetError(f"calibration cache not found: {path}")
    return parse_trt_cache(path.read_text(errors="replace"), source=f"calibration cache {path}")


# ---------------------------------------------------------------- calibration tensor file

def list_images(image_dir):
    image_dir = Path(image_dir)
    if not image_dir.is_dir():
        raise BpnetError(f"--cal_image_dir: {image_dir} is not a folder")
    return sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def build_calibration_tensor(image_dir, input_hw, batch_size, batches, normalization=None, progress=None):
    """Preprocess the first batch_size x batches images (sorted by name) exactly like inference
    (letterbox into H x W, normalise): float32 (N, H, W, 3)."""
    from bpnet.preprocess import prepare_batch, read_image

    needed = _images_needed(batch_size, batches)
    images = list_images(image_dir)
    if len(images) < needed:
        raise BpnetError(f"--cal_image_dir: {image_dir} holds {len(images)} images, but --batch_size "
                         f"{batch_size} x --batches {batches} needs {needed}; add images or lower them")
    norm = {} if normalization is None else {"image_scale": normalization.image_scale,
                                             "image_offset": normalization.image_offset}
    out = np.empty((needed, *input_hw, 3), dtype=np.float32)
    for i, path in enumerate(images[:needed]):
        out[i] = prepare_batch([read_image(path)], input_hw, "pad_image_input", **norm)[0][0]
        emit(progress, "calibrate", "preprocess", step=i + 1, num_steps=needed, fraction=(i + 1) / needed)
    return out


def _images_needed(batch_size, batches):
    for flag, value in (("--batch_size", batch_size), ("--batches", batches)):
        if int(value) < 1:
            raise BpnetError(f"{flag}: {value} must be >= 1")
    return int(batch_size) * int(batches)


def load_calibration_tensor(path, input_hw, batch_size, batches):
    """A tensor file written earlier, checked against the requested shape and image count."""
    from bpnet.tensorfile import is_tensorfile, read_tensorfile

    path = Path(path)
    if is_tensorfile(path):
        data = read_tensorfile(path)
    else:
        try:
            data = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as err:
            raise BpnetError(f"--cal_data_file: {path} is neither a TAO TensorFile nor a readable .npy "
                             f"tensor file ({err})") from None
    needed = _images_needed(batch_size, batches)
    if data.ndim != 4 or tuple(data.shape[1:]) != (*input_hw, 3):
        raise BpnetError(f"--cal_data_file: {path} holds shape {tuple(data.shape)}, expected "
                         f"(N, {input_hw[0]}, {input_hw[1]}, 3); delete it to rebuild it for this input size")
    if data.shape[0] < needed:
        raise BpnetError(f"--cal_data_file: {path} holds {data.shape[0]} images, but --batch_size "
                         f"{batch_size} x --batches {batches} needs {needed}; delete it to rebuild it")
    return np.asarray(data[:needed], dtype=np.float32)


def calibration_tensor(input_hw, batch_size, batches, image_dir=None, data_file=None,
                       normalization=None, progress=None):
    """(data, reused): the tensor file's content when it exists, else the preprocessed images
    (saved to `data_file` when one is given, so the next run skips preprocessing)."""
    if data_file is not None and Path(data_file).is_file():
        return load_calibration_tensor(data_file, input_hw, batch_size, batches), True
    if image_dir is None:
        where = f" and --cal_data_file {data_file} does not exist yet" if data_file else ""
        raise BpnetError(f"INT8 calibration needs calibration images: give --cal_image_dir{where}")
    data = build_calibration_tensor(image_dir, input_hw, batch_size, batches, normalization, progress)
    if data_file is not None:
        save_calibration_tensor(data_file, data, batch_size)
    return data, False


def save_calibration_tensor(path, data, batch_size):
    """`.npy`: one NumPy array; any other name (TAO's `.tensorfile`): TAO's TensorFile layout."""
    if Path(path).suffix.lower() == ".npy":
        with atomic_path(path) as tmp:
            np.save(tmp, data)
    else:
        from bpnet.tensorfile import write_tensorfile

        write_tensorfile(path, data, batch_size)


# ---------------------------------------------------------------- statistics of an ONNX graph

def activation_tensor_names(model):
    """Graph inputs and every float tensor computed by a node: what TensorRT calibrates."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in list(inferred.graph.value_info) + list(inferred.graph.output) + list(inferred.graph.input)}
    initializers = {init.name for init in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    for node in model.graph.node:
        if node.op_type in ("Constant", "Shape"):
            continue
        for out in node.output:
            if out and types.get(out) == onnx.TensorProto.FLOAT and out not in names:
                names.append(out)
    return names


def _with_all_outputs(model, names):
    """A copy of `model` whose graph outputs include every tensor in `names`."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    existing = {o.name for o in copy.graph.output}
    for name in names:
        if name not in existing:
            copy.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    return copy


def input_layout(model):
    """'NHWC' or 'NCHW' from the graph input's static channel dimension (3)."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return "NCHW" if len(dims) == 4 and dims[1] == 3 and dims[3] != 3 else "NHWC"


def collect_stats(onnx_path, data, chunk_size=2, progress=None):
    """Run the graph over `data` (NHWC float32) and record TensorStats of every activation.

    Graph optimisations are off so every ONNX tensor (not fused ones) is observable; images go
    through in small chunks because all intermediate tensors are held at once.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    names = activation_tensor_names(model)
    input_name = model.graph.input[0].name
    nchw = input_layout(model) == "NCHW"
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(_with_all_outputs(model, names).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    stats = {name: TensorStats() for name in names}
    total = len(data)
    for start in range(0, total, chunk_size):
        chunk = np.ascontiguousarray(data[start:start + chunk_size], dtype=np.float32)
        if nchw:
            chunk = np.ascontiguousarray(chunk.transpose(0, 3, 1, 2))
        outputs = session.run(names, {input_name: chunk})
        for name, value in zip(names, outputs):
            stats[name].observe(value)
        done = min(start + chunk_size, total)
        emit(progress, "calibrate", "step", step=done, num_steps=total, fraction=done / total)
    return stats


def calibrate_onnx(onnx_path, data, methods=("entropy",), percentile=DEFAULT_PERCENTILE,
                   chunk_size=2, progress=None):
    """{method: Calibration} for each requested calibrator from one pass over `data`."""
    for method in methods:
        if method not in CALIBRATORS:
            raise BpnetError(f"--calibrator: {method!r} is not one of {', '.join(CALIBRATORS)}")
    started = time.perf_counter()
    stats = collect_stats(onnx_path, data, chunk_size, progress)
    collected = time.perf_counter() - started
    result = {}
    for method in methods:
        t0 = time.perf_counter()
        result[method] = calibration_from_stats(stats, method, percentile, num_images=len(data))
        result[method].seconds = collected + time.perf_counter() - t0
        result[method].extra["num_tensors"] = len(stats)
    return result


# ---------------------------------------------------------------- Q/DQ ONNX models

QDQ_TARGETS = ("ort", "tensorrt")


def write_qdq_onnx(onnx_path, output_path, calibration, target="ort"):
    """A Q/DQ INT8 ONNX of `onnx_path` with activation ranges from `calibration` (weights are
    quantised per output channel by ONNX Runtime's quantizer)."""
    import onnx
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorData, TensorsData
    from onnxruntime.quantization.qdq_quantizer import QDQQuantizer
    from onnxruntime.quantization.quant_utils import load_model_with_shape_infer

    if target not in QDQ_TARGETS:
        raise BpnetError(f"Q/DQ target {target!r} is not one of {', '.join(QDQ_TARGETS)}")
    model = load_model_with_shape_infer(Path(onnx_path))
    if target == "ort":
        ranges = calibration.ranges
        activation_type, extra = QuantType.QUInt8, {}
    else:
        ranges = {name: (-a, a) for name, a in calibration.amax.items()}
        # TensorRT wants symmetric int8 everywhere and keeps its own ReLU fusion.
        activation_type = QuantType.QInt8
        extra = {"ActivationSymmetric": True, "WeightSymmetric": True, "QDQKeepRemovableActivations": True}
    tensors = TensorsData(CalibrationMethod.MinMax, {
        name: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for name, (lo, hi) in ranges.items()})
    quantizer = QDQQuantizer(model, True, False, QuantType.QInt8, activation_type, tensors,
                             [], output_layers(model), ["Conv", "MaxPool", "Concat", "Relu", "Add", "Mul", "Resize"],
                             extra)
    quantizer.quantize_model()
    quantized = quantizer.model.model
    # The quantizer appends Q/DQ nodes after their consumers; ONNX (shape inference, TensorRT's
    # parser) expects nodes in topological order.
    sort_nodes_topologically(quantized.graph)
    with atomic_path(output_path) as tmp:
        onnx.save(quantized, str(tmp))
    return Path(output_path)


LAYOUT_OPS = ("Transpose", "Identity", "Reshape")


def output_layers(model):
    """Names of the nodes that compute the graph outputs (through layout-only ops).

    They stay in float: heatmap peaks and PAF values near 1 are rare by nature, so a threshold
    that clips rare values (entropy, percentile) would clip exactly the signal the decoder reads;
    TensorRT's implicit INT8 likewise returns network outputs in float. They are 1x1 convs, cheap.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    names = []
    for output in model.graph.output:
        node = producers.get(output.name)
        while node is not None and node.op_type in LAYOUT_OPS:
            names.append(node.name)
            node = producers.get(node.input[0])
        if node is not None:
            names.append(node.name)
    return names


def sort_nodes_topologically(graph):
    """Reorder `graph.node` in place so every node comes after the producers of its inputs."""
    available = {i.name for i in graph.input} | {init.name for init in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        ready = [n for n in pending if all(name in available for name in n.input)]
        if not ready:
            raise BpnetError("the ONNX graph has a cycle or an input no node produces: "
                             f"{sorted({i for n in pending for i in n.input} - available)[:5]}")
        ready_ids = {id(n) for n in ready}
        pending = [n for n in pending if id(n) not in ready_ids]
        for node in ready:
            ordered.append(node)
            available.update(node.output)
    nodes = [_copy_node(n) for n in ordered]
    del graph.node[:]
    graph.node.extend(nodes)


def _copy_node(node):
    import onnx

    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy

