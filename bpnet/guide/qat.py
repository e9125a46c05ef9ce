"""Quantization-aware fine-tuning (QAT): the INT8 gate's heaviest remedy.

`quantization_aware_finetune(model_path, train_spec, out_dir, steps)` wraps a trained float
BodyPoseNet with tensorflow-model-optimization's default 8-bit scheme (fake-quant on weights and
activations), fine-tunes it a few steps with the project's data pipeline, loss and train step
(`bpnet.train.make_train_step`), and exports the chosen stage to ONNX with tf2onnx.

What lands in `out_dir`:

    events.jsonl      start, step, done (or error)
    model.qat.onnx    the fine-tuned model with QuantizeLinear/DequantizeLinear nodes
    qat_summary.json  steps, losses, the ONNX export summary, the Q/DQ node counts

Known limit of the export: tf2onnx turns tfmot's activation fake-quant into Q/DQ pairs, but the
weight fake-quant is folded into float constants (the weights are already rounded to the int8
grid, yet stored as float). ONNX Runtime and `bpnet evaluate` run the file as is; TensorRT
quantizes such weights itself when it builds an INT8 engine from it.
"""

import math
import time
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.events import EventLog, emit

STAGE = "qat"
EVENTS_FILE = "events.jsonl"
ONNX_FILE = "model.qat.onnx"
SUMMARY_FILE = "qat_summary.json"
DEFAULT_STEPS = 200
# Activation fake-quant moves outputs by up to a few quantization steps; the float check of
# `bpnet.export` (1e-3) is for exact conversions, this one only catches a broken conversion.
QDQ_PARITY_TOLERANCE = 0.05


def quantization_aware_finetune(model_path, train_spec, out_dir, steps=None, stage=None,
                                onnx_path=None, progress=None):
    """Fine-tune the float model at `model_path` with fake quantization; return the summary.

    `train_spec` (a TrainSpec) supplies the data, batch size, resolution, optimizer and learning
    rate schedule (QAT wants a small rate: a tenth of the training rate is a good start); `steps`
    defaults to the spec's `num_epoch` x `steps_per_epoch` (or DEFAULT_STEPS when it has none).
    `stage` picks the stage to export (None = last); `onnx_path` defaults to out_dir/ONNX_FILE.
    """
    from bpnet.train import check_train_spec

    if not Path(model_path).is_file():
        raise BpnetError(f"model_path: float model not found: {model_path}")
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise BpnetError(f"steps: {steps!r} is not allowed; give a whole number >= 1")
    check_train_spec(train_spec)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(out_dir / EVENTS_FILE, forward=progress)
    try:
        onnx_path = Path(onnx_path) if onnx_path else out_dir / ONNX_FILE
        return _finetune(Path(model_path), train_spec, out_dir, steps, stage, onnx_path, log)
    except BpnetError as err:
        EventLog(log.path)({"stage": STAGE, "event": "error", "message": str(err), "time": time.time()})
        raise


def _finetune(model_path, spec, out_dir, steps, stage, onnx_path, log):
    from bpnet.data.pipeline import data_errors, make_dataset
    from bpnet.fileio import write_json_atomic
    from bpnet.model import load_model
    from bpnet.train import make_optimizer, make_train_step, pick_strategy

    import tensorflow as tf

    started = time.time()
    tf.keras.utils.set_random_seed(spec.random_seed)
    total = steps or (spec.num_epoch * spec.steps_per_epoch if spec.steps_per_epoch else DEFAULT_STEPS)
    dataset = make_dataset(spec, training=True)   # BpnetError on bad data, before any training
    strategy = pick_strategy()
    with strategy.scope():
        float_model = load_model(model_path)
        model = quantize_bodyposenet(float_model)
        ranges = calibrate_activation_ranges(float_model, model, calibration_images(dataset))
        optimizer = make_optimizer(spec.optimizer)
        optimizer.build(model.trainable_variables)
    step_fn = make_train_step(model, optimizer, strategy)
    emit(log, STAGE, "start", num_steps=total, fake_quant_layers=count_fake_quant_layers(model),
         calibrated_ranges=ranges,
         message=f"quantization-aware fine-tuning of {model_path.name} for {total} steps")
    with data_errors():
        losses = run_steps(step_fn, optimizer, strategy.experimental_distribute_dataset(dataset),
                           total, spec, log)
    emit(log, STAGE, "phase", message="exporting the QAT model to ONNX", fraction=0.95)
    export = export_qat_onnx(model, onnx_path, spec.dataloader.image_shape, stage)
    summary = {"model": str(model_path), "onnx": export["onnx"], "steps": total,
               "first_loss": losses[0], "final_loss": losses[-1],
               "losses": losses, "fake_quant_layers": count_fake_quant_layers(model),
               "export": export, "time_s": round(time.time() - started, 3),
               "weights_note": "weights are stored as float (rounded to the int8 grid); "
                               "activations carry Q/DQ nodes"}
    write_json_atomic(out_dir / SUMMARY_FILE, summary)
    emit(log, STAGE, "done", fraction=1.0, loss=losses[-1], model_path=export["onnx"],
         message=f"QAT: {total} steps, final loss {losses[-1]:.4g}, exported {export['onnx']}")
    return summary


def quantize_bodyposenet(model):
    """`model` with tfmot's default 8-bit fake quantization, outputs keeping their names.

    tfmot renames every wrapped layer `quant_<name>`; linear Activation layers named as before
    put `stage{k}_heatmaps` / `stage{k}_pafs` back, so the train step and `stage_model` find them.
    """
    import tensorflow as tf
    import tensorflow_model_optimization as tfmot

    unsupported = sorted({type(layer).__name__ for layer in model.layers} - QUANTIZABLE_LAYERS)
    if unsupported:
        raise BpnetError(f"model {model.name!r}: layers of type {', '.join(unsupported)} cannot be "
                         f"quantization-aware trained; supported: {', '.join(sorted(QUANTIZABLE_LAYERS))}")
    quantized = tfmot.quantization.keras.quantize_model(model)
    outputs = [tf.keras.layers.Activation("linear", name=name)(tensor)
               for name, tensor in zip(model.output_names, quantized.outputs)]
    return tf.keras.Model(quantized.inputs, outputs, name=f"{model.name}_qat")


# Layer types BodyPoseNet uses that tfmot's default 8-bit registry quantizes.
QUANTIZABLE_LAYERS = {"InputLayer", "Conv2D", "ReLU", "MaxPooling2D", "Concatenate",
                      "BatchNormalization", "Activation"}


CALIBRATION_BATCHES = 4
RANGE_SUFFIXES = ("output", "post_activation", "quantize_layer")


def calibration_images(dataset, batches=CALIBRATION_BATCHES):
    return [images.numpy() for images, _ in dataset.take(batches)]


def calibrate_activation_ranges(float_model, qat_model, batches):
    """Set every activation quantizer's range to what the float model produces on `batches`.

    tfmot starts each range at [-6, 6] and only moves it by an exponential average with decay
    0.999, so a short fine-tune would quantize small BodyPoseNet activations (a few hundredths)
    to one or two levels. Starting from observed ranges (always containing 0, as the quantizer
    requires) lets a few hundred steps suffice. Returns the number of ranges set.
    """
    import tensorflow as tf

    probed = [layer for layer in float_model.layers if not isinstance(layer, tf.keras.layers.InputLayer)]
    probe = tf.keras.Model(float_model.inputs, [float_model.inputs[0]] + [l.output for l in probed])
    names = [None] + [layer.name for layer in probed]
    low, high = {}, {}
    for batch in batches:
        for name, value in zip(names, probe(batch, training=False)):
            value = np.asarray(value)
            low[name] = min(low.get(name, 0.0), float(value.min()))
            high[name] = max(high.get(name, 0.0), float(value.max()))
    count = 0
    for layer in qat_model.layers:
        # A QuantizeLayer quantizes the model input; a wrapper quantizes its layer's output.
        source = getattr(getattr(layer, "layer", None), "name", None)
        for variable in layer.non_trainable_weights:
            base = variable.name.split("/")[-1].split(":")[0]
            for suffix, bound in (("_min", low), ("_max", high)):
                if base.endswith(suffix) and base[:-len(suffix)] in RANGE_SUFFIXES:
                    variable.assign(tf.fill(variable.shape, bound[source]))
                    count += 1
    return count // 2


def count_fake_quant_layers(model):
    return sum(type(layer).__name__ in ("QuantizeLayer", "QuantizeWrapper", "QuantizeWrapperV2")
               for layer in model.layers)


def run_steps(step_fn, optimizer, dataset, total, spec, log):
    """`total` train steps over `dataset` (restarted when it ends); the per-step task losses."""
    from bpnet.lr_schedule import learning_rate_at

    losses, iterator = [], iter(dataset)
    for step in range(total):
        lr = learning_rate_at(step, total, spec.optimizer.learning_rate_schedule)
        optimizer.learning_rate.assign(lr)
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(dataset)
            batch = next(iterator)
        loss = float(step_fn(batch)[0])
        if not math.isfinite(loss):
            raise BpnetError(f"QAT diverged: loss is {loss} at step {step + 1}; lower "
                             f"optimizer.learning_rate_schedule.base_learning_rate (now "
                             f"{spec.optimizer.learning_rate_schedule.base_learning_rate})")
        losses.append(loss)
        emit(log, STAGE, "step", step=step + 1, num_steps=total, loss=loss, lr=lr,
             fraction=0.95 * (step + 1) / total)
    return losses


def export_qat_onnx(model, output_path, input_hw, stage=None):
    """ONNX of one stage of the QAT Keras model (dynamic batch), checked against Keras."""
    import onnx

    from bpnet.export import keras_to_onnx, max_output_difference, parity_batch, stage_of
    from bpnet.fileio import atomic_path
    from bpnet.preprocess import check_input_hw

    input_hw = check_input_hw(input_hw, "input_hw")
    keras_model, stages = stage_of(model, stage)
    proto = keras_to_onnx(keras_model, input_hw)
    ops = [node.op_type for node in proto.graph.node]
    qdq = {"QuantizeLinear": ops.count("QuantizeLinear"), "DequantizeLinear": ops.count("DequantizeLinear")}
    if not qdq["QuantizeLinear"]:
        raise BpnetError("QAT export: tf2onnx produced no QuantizeLinear node; the fake "
                         "quantization was lost in the conversion")
    diff = max_output_difference(keras_model, proto, parity_batch(input_hw))
    if not diff <= QDQ_PARITY_TOLERANCE:
        raise BpnetError(f"QAT export differs from the Keras QAT model by {diff:.3g} (allowed "
                         f"{QDQ_PARITY_TOLERANCE}); the conversion is wrong for this model")
    onnx.helper.set_model_props(proto, {"bpnet_stage": str(stage or stages),
                                        "bpnet_input_hw": f"{input_hw[0]},{input_hw[1]}",
                                        "bpnet_sdk_compatible": "false",
                                        "bpnet_quantization": "qat"})
    with atomic_path(output_path) as tmp:
        onnx.save(proto, str(tmp))
    return {"onnx": str(output_path), "input_hw": list(input_hw), "stage": stage or stages,
            "num_stages": stages, "max_abs_diff": diff, "qdq_nodes": qdq}
