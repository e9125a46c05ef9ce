"""TensorRT's calibration cache (text): a `TRT-<version>-<algorithm>` header, then one
`tensor_name: <hex of the big-endian float32 scale>` line per tensor (scale = amax / 127, names
= ONNX tensor names), so TensorRT 8-10 builds an engine from the same ONNX without recalibrating."""

import struct
from pathlib import Path

from bpnet.errors import BpnetError
from bpnet.fileio import write_text_atomic

CACHE_ALGORITHMS = {
    # TensorRT checks the header's algorithm against the calibrator reading the cache; it has no
    # percentile calibrator, so percentile thresholds travel under the entropy calibrator's header
    # (the builder then only reads the cache, never recomputes it).
    "entropy": "EntropyCalibration2",
    "percentile": "EntropyCalibration2",
    "minmax": "MinMaxCalibration",
}
DEFAULT_TRT_VERSION = (8, 6, 1)   # the TensorRT of TAO 5's deployment containers


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
