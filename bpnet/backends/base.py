"""The one inference interface every runtime implements: a batch in, the selected stage's maps out.

Evaluation, inference and benchmarking talk to a `Backend` only, so a Keras model, an ONNX file
and a TensorRT engine are interchangeable; the file extension picks the implementation.
Runtime libraries are imported lazily inside each backend module, so choosing the ONNX Runtime
backend never loads TensorFlow and a machine without TensorRT can still run the other two.
"""

import importlib
from pathlib import Path

from bpnet.errors import BpnetError

# extension -> (module, class); modules are imported only when a model of that kind is loaded.
BACKENDS = {
    ".hdf5": ("bpnet.backends.keras_backend", "KerasBackend"),
    ".h5": ("bpnet.backends.keras_backend", "KerasBackend"),
    ".onnx": ("bpnet.backends.ort_backend", "OrtBackend"),
    ".engine": ("bpnet.backends.trt_backend", "TensorRTBackend"),
    ".plan": ("bpnet.backends.trt_backend", "TensorRTBackend"),
}


class Backend:
    """A loaded model ready to run.

    Attributes every implementation sets:
      name        short runtime name: "keras", "onnxruntime", "tensorrt"
      precision   "fp32", "fp16" or "int8"
      input_hw    (H, W) the model requires, or None when any multiple of the stride works
      input_name  name of the image input
      output_names  names of the (heatmaps, pafs) outputs
      stage       the 1-based stage whose maps `predict` returns
      num_stages  how many stages the model has (or exposes)
      normalization  the model card's BGR normalisation (NormalizationSpec) for imported
                  networks, None for models that follow the spec's (set by load_backend)

    `predict(batch)` takes float32 (N, H, W, 3), already normalised by bpnet.preprocess, and
    returns float32 numpy arrays (heatmaps (N, H/8, W/8, 19), pafs (N, H/8, W/8, 38)).
    """

    name = "base"
    precision = "fp32"
    input_hw = None
    input_name = "input"
    output_names = ("heatmaps", "pafs")
    stage = None
    num_stages = None
    normalization = None

    def predict(self, batch):
        raise NotImplementedError(f"{type(self).__name__} does not implement predict")

    def close(self):
        """Release the runtime's resources (sessions, device memory). Safe to call twice."""

    def describe(self):
        """A JSON-friendly summary, recorded next to metrics."""
        return {"backend": self.name, "precision": self.precision,
                "input_hw": list(self.input_hw) if self.input_hw else None,
                "stage": self.stage, "num_stages": self.num_stages}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_backend(model_path, stage=None, threads=None):
    """Open `model_path` with the backend its extension names; `stage` None = the last stage.
    `threads` (CPU backends only) fixes the runtime's intra-op thread count; None = its default."""
    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix not in BACKENDS:
        raise BpnetError(f"model {path}: unknown model type {suffix or '(no extension)'!r}; "
                         f"expected one of {sorted(BACKENDS)}")
    if not path.is_file():
        raise BpnetError(f"model not found: {path}")
    module_name, class_name = BACKENDS[suffix]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BpnetError(f"model {path}: the {class_name} runtime is not available here ({err}); "
                         "TensorRT engines need the tensorrt package and an NVIDIA GPU") from None
    if threads and suffix in (".engine", ".plan"):
        raise BpnetError(f"model {path}: a thread count applies to CPU runtimes, not TensorRT engines")
    extra = {"threads": int(threads)} if threads else {}
    backend = getattr(module, class_name)(path, stage=stage, **extra)
    from bpnet.imports.card import model_normalization
    backend.normalization = model_normalization(path)
    return backend
