"""Everything TensorRT: engine building (`bpnet export --engine_file`) and the `.engine` backend.

Two build paths, chosen by `tensorrt.__version__`:
- TensorRT 8.x-10.x: parse the FP32 ONNX and quantise implicitly: BuilderFlag.FP16 for FP16;
  BuilderFlag.INT8 with an IInt8EntropyCalibrator2 (or IInt8MinMaxCalibrator, following the
  cache header) that reads the calibration cache written by `bpnet.calibrate`, and only when the
  cache is absent feeds batches from the calibration tensor file and writes the cache back.
- TensorRT >= 11 (no calibrators, no precision flags, strongly typed networks): parse the
  symmetric Q/DQ ONNX for INT8, or the FP16 ONNX for FP16.
TensorRT and a CUDA binding (cuda-python, else pycuda) are imported lazily: on a machine
without them every entry point raises a BpnetError saying so before any work is done.
"""

import json
from pathlib import Path

import numpy as np

from bpnet.backends.base import Backend
from bpnet.errors import BpnetError
from bpnet.fileio import atomic_path, write_json_atomic

INSTALL_HINT = ("TensorRT engines need an NVIDIA GPU with its driver, the `tensorrt` Python package "
                "and cuda-python (or pycuda); use the ONNX files with ONNX Runtime on this machine")


# ---------------------------------------------------------------- availability

def require_tensorrt(option="--engine_file"):
    """The tensorrt module and a CUDA runtime, or a BpnetError naming `option`."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BpnetError(f"{option}: TensorRT is not installed here. {INSTALL_HINT}") from None
    cuda = cuda_runtime()
    if cuda is None:
        raise BpnetError(f"{option}: no CUDA Python binding (cuda-python or pycuda) is installed. {INSTALL_HINT}")
    if cuda.device_count() < 1:
        raise BpnetError(f"{option}: TensorRT is installed but no CUDA GPU is visible. {INSTALL_HINT}")
    return trt, cuda


def tensorrt_major(trt):
    return int(str(trt.__version__).split(".")[0])


def cuda_runtime():
    """A small CUDA runtime wrapper (malloc, copies, streams) or None if no binding exists."""
    try:
        from cuda.bindings import runtime as cudart      # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart                      # older cuda-python
        except ImportError:
            cudart = None
    if cudart is not None:
        return _CudaPython(cudart)
    try:
        import pycuda.driver as driver
    except ImportError:
        return None
    return _PyCuda(driver)


class _CudaPython:
    def __init__(self, cudart):
        self.rt = cudart

    def _call(self, result):
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self.rt.cudaError_t.cudaSuccess:
            raise BpnetError(f"CUDA call failed: {err}")
        return values[0] if len(values) == 1 else values

    def device_count(self):
        try:
            return int(self._call(self.rt.cudaGetDeviceCount()))
        except BpnetError:
            return 0

    def malloc(self, nbytes):
        return int(self._call(self.rt.cudaMalloc(int(nbytes))))

    def free(self, pointer):
        self._call(self.rt.cudaFree(pointer))

    def stream(self):
        return self._call(self.rt.cudaStreamCreate())

    def stream_handle(self, stream):
        return int(stream)

    def to_device(self, pointer, array, stream):
        self._call(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice, stream))

    def to_host(self, array, pointer, stream):
        self._call(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes,
                                           self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, stream))

    def synchronize(self, stream):
        self._call(self.rt.cudaStreamSynchronize(stream))


class _PyCuda:
    def __init__(self, driver):
        self.driver = driver
        self._allocations = {}
        driver.init()
        self._context = driver.Device(0).make_context() if driver.Device.count() else None

    def device_count(self):
        return self.driver.Device.count()

    def malloc(self, nbytes):
        allocation = self.driver.mem_alloc(int(nbytes))
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer):
        allocation = self._allocations.pop(pointer, None)
        if allocation is not None:
            allocation.free()

    def stream(self):
        return self.driver.Stream()

    def stream_handle(self, stream):
        return stream.handle

    def to_device(self, pointer, array, stream):
        self.driver.memcpy_htod_async(pointer, array, stream)

    def to_host(self, array, pointer, stream):
        self.driver.memcpy_dtoh_async(array, pointer, stream)

    def synchronize(self, stream):
        stream.synchronize()


# ---------------------------------------------------------------- calibrator (TensorRT 8-10)

def make_calibrator(trt, cuda, cache_file, data_file=None, batch_size=1, batches=1, input_hw=None,
                    nchw=False):
    """An IInt8EntropyCalibrator2 (or IInt8MinMaxCalibrator for a MinMax cache) that serves the
    cache when it exists and otherwise batches of the calibration tensor file."""
    cache_file = Path(cache_file)
    header = cache_file.read_text(errors="replace").split("\n", 1)[0] if cache_file.is_file() else ""
    base = trt.IInt8MinMaxCalibrator if header.endswith("MinMaxCalibration") else trt.IInt8EntropyCalibrator2

    class TensorFileCalibrator(base):
        def __init__(self):
            base.__init__(self)
            self.data = None
            self.next_batch = 0
            self.device = None
            self.stream = cuda.stream()

        def _load(self):
            from bpnet.calibrate.tensor_file import load_calibration_tensor
            if data_file is None or not Path(data_file).is_file():
                raise BpnetError(f"TensorRT needs calibration data: {cache_file} does not exist and no "
                                 "--cal_data_file was given")
            data = load_calibration_tensor(data_file, input_hw, batch_size, batches)
            self.data = np.ascontiguousarray(data.transpose(0, 3, 1, 2) if nchw else data)
            self.device = cuda.malloc(self.data[:batch_size].nbytes)

        def get_batch_size(self):
            return int(batch_size)

        def get_batch(self, names):
            if self.data is None:
                self._load()
            if self.next_batch >= int(batches):
                return None
            start = self.next_batch * batch_size
            chunk = np.ascontiguousarray(self.data[start:start + batch_size])
            cuda.to_device(self.device, chunk, self.stream)
            cuda.synchronize(self.stream)
            self.next_batch += 1
            return [self.device]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache):
            with atomic_path(cache_file) as tmp:
                tmp.write_bytes(bytes(cache))

    return TensorFileCalibrator()


# ---------------------------------------------------------------- building

def engine_source(major, precision, onnx_path, qdq_or_fp16_onnx_path):
    """Which ONNX file TensorRT parses: from 11 on the precision is in the graph itself."""
    if major >= 11 and precision in ("fp16", "int8"):
        return Path(qdq_or_fp16_onnx_path)
    return Path(onnx_path)


def build_engine(onnx_path, qdq_or_fp16_onnx_path, engine_path, precision, input_hw, max_batch_size=1,
                 max_workspace_size=None, cal_cache_file=None, cal_data_file=None, batch_size=1,
                 batches=1, nchw_input=False, stage=None, strict_types=False, opt_batch_size=None,
                 float_layers=()):
    """Build and serialise a TensorRT engine; writes `engine_path` and `engine_path.json`.
    `strict_types` (TAO's -s) makes layers keep the precision asked for instead of falling back
    to a faster one; `opt_batch_size` is the batch the optimisation profile tunes for.
    `float_layers`: ONNX node names accuracy control kept in float. From TensorRT 11 the Q/DQ
    file already computes them in float; 8-10 (implicit INT8) get them pinned to FP32
    (`pin_float_layers`)."""
    trt, cuda = require_tensorrt()
    major = tensorrt_major(trt)
    source = engine_source(major, precision, onnx_path, qdq_or_fp16_onnx_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Explicit batch is the only mode from 10 on (the flag is deprecated there).
    flags = 0 if major >= 10 else 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(source.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BpnetError(f"TensorRT could not parse {source}: {errors}")
    config = builder.create_builder_config()
    if max_workspace_size and hasattr(trt, "MemoryPoolType"):
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(max_workspace_size))
    elif max_workspace_size:   # TensorRT < 8.4
        config.max_workspace_size = int(max_workspace_size)
    h, w = input_hw

    def shape(n):
        return (n, 3, h, w) if nchw_input else (n, h, w, 3)

    max_batch_size = max(int(max_batch_size), 1)
    profile = builder.create_optimization_profile()
    opt = min(max(int(opt_batch_size or max_batch_size), 1), max_batch_size)
    profile.set_shape("input", shape(1), shape(opt), shape(max_batch_size))
    config.add_optimization_profile(profile)
    if strict_types and precision != "fp32":
        # STRICT_TYPES became OBEY_PRECISION_CONSTRAINTS in TensorRT 8.2.
        flag = getattr(trt.BuilderFlag, "OBEY_PRECISION_CONSTRAINTS", None) or trt.BuilderFlag.STRICT_TYPES
        config.set_flag(flag)
    if major < 11 and precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    if major < 11 and precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
        calibration_profile = builder.create_optimization_profile()
        calibration_profile.set_shape("input", shape(batch_size), shape(batch_size), shape(batch_size))
        config.set_calibration_profile(calibration_profile)
        config.int8_calibrator = make_calibrator(trt, cuda, cal_cache_file, cal_data_file, batch_size,
                                                 batches, input_hw, nchw_input)
    pinned = pin_float_layers(trt, network, config, float_layers) if major < 11 and precision == "int8" else []
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BpnetError(f"TensorRT failed to build an engine from {source} (see its log above)")
    with atomic_path(engine_path) as tmp:
        tmp.write_bytes(bytes(serialized))
    info = {"engine": str(engine_path), "source_onnx": str(source), "precision": precision,
            "tensorrt": trt.__version__, "input_hw": list(input_hw), "max_batch_size": max_batch_size,
            "input_layout": "NCHW" if nchw_input else "NHWC", "stage": stage,
            "build_path": "explicit Q/DQ (TensorRT >= 11)" if major >= 11 else "implicit (calibrator/flags)",
            "float_layers": list(float_layers), "pinned_float_layers": pinned}
    write_json_atomic(engine_info_path(engine_path), info)
    return info


def pin_float_layers(trt, network, config, float_layers):
    """Make the network layers parsed from the ONNX nodes `float_layers` compute and output FP32
    (`ILayer.precision`, `ILayer.set_output_type`), with the builder told to prefer those
    constraints; returns the TensorRT layer names pinned (the ONNX parser names each layer after
    its node).
    """
    wanted = {name for name in float_layers if not name.startswith("output:")}
    if not wanted:
        return []
    pinned = []
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if layer.name in wanted:
            layer.precision = trt.float32
            for output in range(layer.num_outputs):
                layer.set_output_type(output, trt.float32)
            pinned.append(layer.name)
    missing = sorted(wanted - set(pinned))
    if missing:
        raise BpnetError(f"TensorRT network has no layer for the float layer(s) {missing[:5]}: the ONNX "
                         "parser did not keep their node names; rebuild from the Q/DQ file on TensorRT >= 11")
    # PREFER: honoured wherever TensorRT has an FP32 kernel (it warns otherwise); OBEY would fail
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    return pinned


def engine_info_path(engine_path):
    return Path(f"{engine_path}.json")


# ---------------------------------------------------------------- the backend

class TensorRTBackend(Backend):
    """A serialised engine with input `input` (N, H, W, 3) and outputs `heatmaps`, `pafs`."""

    name = "tensorrt"

    def __init__(self, model_path, stage=None):
        trt, self.cuda = require_tensorrt(f"model {model_path}")
        info_path = engine_info_path(model_path)
        info = json.loads(info_path.read_text()) if info_path.is_file() else {}
        if stage is not None and info.get("stage") not in (None, stage):
            raise BpnetError(f"model {model_path}: this engine computes stage {info['stage']}, not {stage}; "
                             "export that stage with `bpnet export --stage` and build its engine")
        self.precision = info.get("precision", "unknown")
        self.stage = info.get("stage")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(model_path).read_bytes())
        if self.engine is None:
            raise BpnetError(f"model {model_path} is not a TensorRT engine for this TensorRT "
                             f"({trt.__version__}) and GPU; rebuild it here")
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        missing = {"input", "heatmaps", "pafs"} - set(names)
        if missing:
            raise BpnetError(f"model {model_path}: engine tensors {names} lack {sorted(missing)}")
        dims = list(self.engine.get_tensor_shape("input"))
        if dims[-1] != 3:
            raise BpnetError(f"model {model_path}: input shape {dims} is not NHWC; the SDK (NCHW) "
                             "variant is for deployment pipelines, not for bpnet evaluate/bench")
        self.input_hw = (int(dims[1]), int(dims[2]))
        self.max_batch_size = int(self.engine.get_tensor_profile_shape("input", 0)[2][0])
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self._buffers = {}

    def _buffer(self, name, nbytes):
        pointer, size = self._buffers.get(name, (None, 0))
        if size < nbytes:
            if pointer is not None:
                self.cuda.free(pointer)
            pointer = self.cuda.malloc(nbytes)
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _run(self, chunk):
        self.context.set_input_shape("input", chunk.shape)
        self.context.set_tensor_address("input", self._buffer("input", chunk.nbytes))
        outputs = {}
        for name in self.output_names:
            outputs[name] = np.empty(tuple(self.context.get_tensor_shape(name)), dtype=np.float32)
            self.context.set_tensor_address(name, self._buffer(name, outputs[name].nbytes))
        self.cuda.to_device(self._buffers["input"][0], chunk, self.stream)
        if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
            raise BpnetError("TensorRT execution failed (see its log above)")
        for name, array in outputs.items():
            self.cuda.to_host(array, self._buffers[name][0], self.stream)
        self.cuda.synchronize(self.stream)
        return outputs["heatmaps"], outputs["pafs"]

    def predict(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if tuple(batch.shape[1:3]) != self.input_hw:
            raise BpnetError(f"TensorRT engine input is {self.input_hw}, got a batch of {batch.shape[1:3]}")
        results = [self._run(np.ascontiguousarray(batch[i:i + self.max_batch_size]))
                   for i in range(0, len(batch), self.max_batch_size)]
        return (np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results]))

    def close(self):
        for pointer, _ in self._buffers.values():
            self.cuda.free(pointer)
        self._buffers = {}
