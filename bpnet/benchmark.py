"""Latency and throughput of a model on its backend, plus its size (parameters) and cost (GFLOPs).

Any file `load_backend` opens works: .hdf5 (Keras), .onnx (ONNX Runtime; FP32, FP16 or INT8 Q/DQ,
detected from the graph) and .engine (TensorRT). Warm-up runs are excluded from the statistics.
Parameters and GFLOPs count the convolutions of the graph that runs (the chosen stage):
GFLOPs = 2 x multiply-adds per image at the benchmarked input size.
"""

import platform
import time
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.limits import DEFAULT_EXPORT_HW
from bpnet.preprocess import check_input_hw

DEFAULT_INPUT_HW = DEFAULT_EXPORT_HW    # the workflow's deployment size


def conv_cost(kernel_hw, in_channels, out_channels, out_hw, groups=1, bias=True):
    """(parameters, FLOPs) of one convolution producing an (out_h, out_w) map for one image."""
    kh, kw = kernel_hw
    weights = kh * kw * (in_channels // groups) * out_channels
    params = weights + (out_channels if bias else 0)
    return params, 2 * weights * out_hw[0] * out_hw[1]


def keras_complexity(model_path, input_hw, stage=None):
    """(params, GFLOPs per image) of the Keras stage model; spatial sizes come from one forward
    pass at `input_hw` because the saved model's input is (None, None, 3)."""
    import tensorflow as tf

    from bpnet.export import keras_stage_model

    model, _ = keras_stage_model(model_path, stage)
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    probe = tf.keras.Model(model.input, [layer.output for layer in convs])
    outputs = probe(np.zeros((1, *input_hw, 3), np.float32), training=False)
    params = flops = 0
    for layer, out in zip(convs, outputs):
        kernel = layer.kernel.shape
        p, f = conv_cost(kernel[:2], int(kernel[2]) * layer.groups, int(kernel[3]), out.shape[1:3],
                         layer.groups, layer.use_bias)
        params, flops = params + p, flops + f
    return int(params), flops / 1e9


def onnx_complexity(onnx_path, input_hw):
    """(params, GFLOPs per image) from the Conv nodes of an ONNX graph (float, FP16 or Q/DQ);
    zero channels added by channel padding (bpnet.onnx_pad) are not counted."""
    import onnx

    from bpnet.onnx_pad import padded_channels

    model = onnx.load(str(onnx_path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    nchw = len(dims) == 4 and dims[1].dim_value == 3 and dims[3].dim_value != 3
    fixed = (1, 3, *input_hw) if nchw else (1, *input_hw, 3)
    for dim, value in zip(dims, fixed):
        dim.ClearField("dim_param")
        dim.dim_value = value
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in list(inferred.graph.value_info) + list(inferred.graph.output)}
    initializers = {init.name: list(init.dims) for init in model.graph.initializer}
    produced_by = {out: node for node in model.graph.node for out in node.output}

    def weight_shape(name):
        # Q/DQ graphs feed Conv weights through DequantizeLinear; FP16 graphs may add Casts.
        while name not in initializers and name in produced_by and produced_by[name].op_type in (
                "DequantizeLinear", "Cast", "Identity"):
            name = produced_by[name].input[0]
        return initializers.get(name)

    padding = padded_channels(model)
    params = flops = 0
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        kernel = weight_shape(node.input[1])
        out = shapes.get(node.output[0])
        if kernel is None or not out or len(out) != 4 or 0 in out:
            raise BpnetError(f"{onnx_path}: cannot size Conv node {node.name!r} (weight or output shape unknown)")
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        out_channels, in_per_group, kh, kw = kernel
        zero_filters, zero_inputs = padding.get(node.name, (0, 0))   # bpnet.onnx_pad's, not the model's
        out_channels, in_per_group = out_channels - zero_filters, in_per_group - zero_inputs
        p, f = conv_cost((kh, kw), in_per_group * groups, out_channels, out[2:4], groups,
                         bias=len(node.input) > 2 and bool(node.input[2]))
        params, flops = params + p, flops + f
    return int(params), flops / 1e9


def model_complexity(model_path, input_hw, stage=None):
    """(params, GFLOPs) for .hdf5/.h5 and .onnx; for an engine, of the ONNX it was built from
    (recorded beside it), else (None, None)."""
    suffix = Path(model_path).suffix.lower()
    if suffix in (".hdf5", ".h5"):
        return keras_complexity(model_path, input_hw, stage)
    if suffix == ".onnx":
        return onnx_complexity(model_path, input_hw)
    from bpnet.backends.trt_backend import engine_info_path
    info_path = engine_info_path(model_path)
    if info_path.is_file():
        import json
        source = json.loads(info_path.read_text()).get("source_onnx")
        if source and Path(source).is_file():
            return onnx_complexity(source, input_hw)
    return None, None


def latency_stats(seconds, batch_size):
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    median = float(np.median(ms))
    return {"median_ms": round(median, 3), "p5_ms": round(float(np.percentile(ms, 5)), 3),
            "p95_ms": round(float(np.percentile(ms, 95)), 3),
            "mean_ms": round(float(ms.mean()), 3), "min_ms": round(float(ms.min()), 3),
            "images_per_s": round(batch_size * 1000.0 / median, 3)}


def device_name(backend_name):
    if backend_name == "tensorrt":
        return "cuda"
    return f"cpu ({platform.processor() or platform.machine()})"


def benchmark_model(model_path, input_hw=None, batch_size=1, runs=20, warmup=3, stage=None, threads=None):
    """Time `runs` predictions of one random batch after `warmup` untimed ones; returns a dict
    (with the machine it ran on: CPU, instruction set, threads, load average)."""
    from bpnet.machine import describe_cpu

    from bpnet.backends import load_backend

    for flag, value, low in (("--batch_size", batch_size, 1), ("--runs", runs, 1), ("--warmup", warmup, 0)):
        if int(value) < low:
            raise BpnetError(f"{flag}: {value} must be >= {low}")
    backend = load_backend(model_path, stage=stage, threads=threads)
    try:
        fixed = tuple(backend.input_hw) if backend.input_hw else None
        if input_hw is not None:
            input_hw = check_input_hw(input_hw, "-d/--input_dims")
            if fixed and tuple(input_hw) != fixed:
                raise BpnetError(f"-d/--input_dims: {input_hw[0]},{input_hw[1]} but {model_path} was "
                                 f"exported for {fixed[0]},{fixed[1]}")
        input_hw = input_hw or fixed or DEFAULT_INPUT_HW
        batch = np.random.default_rng(0).uniform(-0.5, 0.5, (int(batch_size), *input_hw, 3)).astype(np.float32)
        for _ in range(int(warmup)):
            backend.predict(batch)
        seconds = []
        for _ in range(int(runs)):
            start = time.perf_counter()
            backend.predict(batch)
            seconds.append(time.perf_counter() - start)
        described = backend.describe()
    finally:
        backend.close()
    params, gflops = model_complexity(model_path, input_hw, stage)
    return {"model": str(model_path), "backend": described.get("backend"),
            "precision": described.get("precision"), "device": device_name(described.get("backend")),
            "input_hw": list(input_hw), "batch_size": int(batch_size), "runs": int(runs),
            "warmup": int(warmup), "stage": described.get("stage"), **latency_stats(seconds, int(batch_size)),
            "params": params, "gflops": round(gflops, 3) if gflops is not None else None,
            "machine": describe_cpu(threads)}


# ---------------------------------------------------------------- end to end

# Images with this many detected people or more share a row of the split.
PEOPLE_BINS = ((0, 0), (1, 1), (2, 3), (4, 7), (8, None))
QUEUE_DEPTH = 4   # images in flight between two stages


def _prepare_one(item, spec, norm):
    """read + letterbox + normalise (`norm`: the model card's or the spec's) one image; returns
    (batch of 1, letterbox, read s, prepare s)."""
    from bpnet.preprocess import prepare_batch, read_image

    started = time.perf_counter()
    image = read_image(item.path)
    read_done = time.perf_counter()
    batch, boxes = prepare_batch([image], spec.input_shape, spec.keep_aspect_ratio_mode,
                                 norm.image_scale, norm.image_offset)
    return batch, boxes[0], read_done - started, time.perf_counter() - read_done


def _run_stages(items, backend, spec, skeleton, pipelined, norm):
    """Every image through read -> letterbox -> CNN -> decode -> COCO keypoints; returns
    (wall seconds, per-image records). Pipelined: one thread per stage, connected by bounded
    queues, so the CNN of image i overlaps the reading of i+1 and the decoding of i-1 (OpenCV,
    ONNX Runtime and TensorFlow release the GIL while they compute)."""
    import queue
    import threading

    from bpnet.decode import decode, decode_options, person_to_coco

    options = decode_options(spec)
    records = [dict(image_id=item.image_id) for item in items]

    def prepare(i):
        batch, box, read_s, prep_s = _prepare_one(items[i], spec, norm)
        records[i].update(read_ms=1000 * read_s, prepare_ms=1000 * prep_s)
        return batch, box

    def cnn(i, batch):
        started = time.perf_counter()
        heatmaps, pafs = backend.predict(batch)
        records[i]["cnn_ms"] = 1000 * (time.perf_counter() - started)
        return heatmaps[0], pafs[0]

    def finish(i, maps, box):
        started = time.perf_counter()
        people = decode(maps[0], maps[1], skeleton, **options)
        keypoints = [person_to_coco(p, box, skeleton, items[i].image_id) for p in people]
        records[i].update(decode_ms=1000 * (time.perf_counter() - started), people=len(keypoints))
        return keypoints

    started = time.perf_counter()
    if not pipelined:
        for i in range(len(items)):
            batch, box = prepare(i)
            finish(i, cnn(i, batch), box)
        return time.perf_counter() - started, records

    to_cnn, to_decode, failures = queue.Queue(QUEUE_DEPTH), queue.Queue(QUEUE_DEPTH), []

    def guarded(body):
        def run():
            try:
                body()
            except BaseException as err:   # surfaced in the calling thread below
                failures.append(err)
                for q in (to_cnn, to_decode):
                    try:
                        q.put_nowait(None)
                    except queue.Full:
                        pass
        return run

    def reader():
        for i in range(len(items)):
            if failures:
                return
            to_cnn.put((i, *prepare(i)))
        to_cnn.put(None)

    def network():
        while (job := to_cnn.get()) is not None:
            i, batch, box = job
            to_decode.put((i, cnn(i, batch), box))
        to_decode.put(None)

    threads = [threading.Thread(target=guarded(body), daemon=True) for body in (reader, network)]
    for thread in threads:
        thread.start()
    try:
        while (job := to_decode.get()) is not None:
            finish(*job)
    except BaseException:
        failures.append(None)   # tells the reader to stop; blocked threads are daemons
        raise
    if failures:
        raise failures[0]
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, records


def people_split(records):
    """Mean per-image ms of each stage by number of people found (PEOPLE_BINS)."""
    rows = []
    for low, high in PEOPLE_BINS:
        chosen = [r for r in records if r["people"] >= low and (high is None or r["people"] <= high)]
        if not chosen:
            continue
        label = f"{low}" if low == high else (f"{low}+" if high is None else f"{low}-{high}")
        row = {"people": label, "images": len(chosen)}
        for stage in ("read", "prepare", "cnn", "decode"):
            row[f"{stage}_ms"] = round(float(np.mean([r[f"{stage}_ms"] for r in chosen])), 3)
        rows.append(row)
    return rows


def benchmark_end_to_end(model_path, images, infer_spec, threads=None, max_images=None, pipelined=True):
    """Deployment throughput: images/s from image files to COCO keypoints (read -> letterbox ->
    CNN -> decode), batch 1, stages pipelined across threads (or one after another), and the
    per-stage split by number of people. One untimed pass over the first images warms up."""
    from bpnet.backends import load_backend
    from bpnet.infer import check_backend_fits, image_items
    from bpnet.machine import describe_cpu
    from bpnet.preprocess import normalization_for
    from bpnet.skeleton import load_skeleton

    items = image_items(images)
    if max_images is not None:
        if int(max_images) < 1:
            raise BpnetError(f"--max_images: {max_images} must be >= 1")
        items = items[:int(max_images)]
    skeleton = load_skeleton(infer_spec.skeleton)
    with load_backend(model_path, stage=infer_spec.output_stage_to_use, threads=threads) as backend:
        check_backend_fits(backend, infer_spec)
        # an imported network is fed its model card's preprocessing, as in `bpnet inference`
        norm = normalization_for(infer_spec.normalization, backend.normalization, "inference spec normalization")
        _run_stages(items[:2], backend, infer_spec, skeleton, False, norm)   # warm-up
        wall, records = _run_stages(items, backend, infer_spec, skeleton, pipelined, norm)
        described = backend.describe()
    busy = {stage: round(float(np.mean([r[f"{stage}_ms"] for r in records])), 3)
            for stage in ("read", "prepare", "cnn", "decode")}
    return {"model": str(model_path), "backend": described["backend"], "precision": described["precision"],
            "input_hw": list(infer_spec.input_shape), "images": len(items), "pipelined": bool(pipelined),
            "images_per_s": round(len(items) / wall, 3), "wall_s": round(wall, 3),
            "ms_per_image": busy, "people_found": int(sum(r["people"] for r in records)),
            "normalization": {"image_scale": list(norm.image_scale), "image_offset": list(norm.image_offset)},
            "by_people": people_split(records), "machine": describe_cpu(threads)}
