"""`train(spec, results_dir, progress)`: the BodyPoseNet training loop.

A plain custom loop (one `tf.function` step) so checkpoints, resumption, cancellation and the
per-step learning rate stay explicit. What lands in `results_dir`:

    spec.yaml                  the spec used (rewritten on every run)
    events.jsonl               start, step, epoch_end, checkpoint, done (or cancelled / error)
    checkpoints/epoch_NNNN.hdf5  every `checkpoint_n_epoch` epochs and at the end; a Keras model
                               plus the optimizer slots and loop state (group `bpnet_training`)
    bpnet_model.hdf5           the final model (Keras HDF5, loads without custom objects)
    training_summary.json      epochs, steps, losses, images/s, parameter count, spec, times

Re-running on the same results dir resumes from the newest checkpoint: the epoch count continues
and the optimizer state is restored. Every file is written atomically, so a cancelled or killed
run never leaves a half-written checkpoint or model.
"""

import json
import math
import time
from pathlib import Path

import h5py
import numpy as np

import bpnet  # noqa: F401  (selects tf-keras before TensorFlow is imported)
import tensorflow as tf

from bpnet.errors import BpnetError, RunCancelled
from bpnet.events import EventLog, emit
from bpnet.fileio import atomic_path, write_json_atomic, write_text_atomic
from bpnet.losses import bpnet_loss
from bpnet.lr_schedule import check_schedule, learning_rate_at
from bpnet.model import (build_model, count_params, load_keras_model, load_model, num_stages,
                         save_model, transfer_weights, with_regularizer, write_hdf5)
from bpnet.skeleton import load_skeleton
from bpnet.specs import spec_to_yaml

STAGE = "train"
MODEL_FILE = "bpnet_model.hdf5"
SUMMARY_FILE = "training_summary.json"
EVENTS_FILE = "events.jsonl"
CHECKPOINT_DIR = "checkpoints"
KEEP_CHECKPOINTS = 3          # older checkpoints are deleted; the newest is enough to resume
STEP_EVENT_INTERVAL_S = 2.0   # step events at most this often (plus each epoch's first and last)
STATE_GROUP = "bpnet_training"


def train(spec, results_dir, progress=None):
    """Train (or resume training) a BodyPoseNet as `spec` (a TrainSpec) says; return the summary.

    `progress(event_dict)` receives every event; it may raise RunCancelled to stop after the
    current step (the newest complete checkpoint stays valid for resuming).
    """
    results_dir = Path(results_dir)
    check_train_spec(spec)
    spec = follow_model_card(spec)
    results_dir.mkdir(parents=True, exist_ok=True)
    log = EventLog(results_dir / EVENTS_FILE, forward=progress)
    try:
        return _train(spec, results_dir, log)
    except RunCancelled:
        # Recorded, not forwarded: the callback that asked to stop should not be called again.
        EventLog(log.path)({"stage": STAGE, "event": "cancelled", "time": time.time()})
        raise
    except BpnetError as err:
        EventLog(log.path)({"stage": STAGE, "event": "error", "message": str(err),
                            "time": time.time()})
        raise


def check_train_spec(spec):
    """Rules across fields that the spec models cannot check one field at a time."""
    check_schedule(spec.optimizer.learning_rate_schedule)
    load_skeleton(spec.dataloader.skeleton)   # a clear error for a bad skeleton before any data is read
    if spec.pretrained_weights is None and spec.load_graph:
        raise BpnetError("load_graph: true needs pretrained_weights (the model file whose "
                         "architecture to load), but pretrained_weights is null")


def follow_model_card(spec):
    """Retraining an imported network: its model card's normalisation and training targets
    replace the spec's defaults (a spec that sets different values explicitly is an error)."""
    from bpnet.imports.card import model_normalization, model_targets
    from bpnet.preprocess import normalization_for

    if not spec.pretrained_weights:
        return spec
    card = model_normalization(spec.pretrained_weights)
    if card is None:
        return spec
    loader = spec.dataloader
    norm = normalization_for(loader.normalization, card, "dataloader.normalization")
    targets = targets_for(loader.targets, model_targets(spec.pretrained_weights))
    return spec.model_copy(update={"dataloader": loader.model_copy(update={"normalization": norm,
                                                                          "targets": targets})})


def targets_for(spec_targets, card_targets, where="dataloader.targets"):
    """The card's training targets when it records them and the spec is at the defaults; the
    spec's when the card does not say; an error when both say different things."""
    from bpnet.specs import TargetSpec

    if card_targets is None or spec_targets == card_targets:
        return spec_targets
    if spec_targets != TargetSpec():
        raise BpnetError(f"{where}: heatmap_sigma_px {spec_targets.heatmap_sigma_px:g} / paf_width_px "
                         f"{spec_targets.paf_width_px:g} disagree with the model card's "
                         f"{card_targets.heatmap_sigma_px:g} / {card_targets.paf_width_px:g} (what the "
                         "network was trained on); remove targets from the spec or set the card's values")
    return card_targets


# ---------------------------------------------------------------- the run

def _train(spec, results_dir, log):
    from bpnet.data.pipeline import count_samples, data_errors, make_dataset

    started = time.time()
    strategy = pick_strategy()
    checkpoint = latest_checkpoint(results_dir)
    state = read_checkpoint_state(checkpoint) if checkpoint else new_state()
    if checkpoint:
        check_same_model(state, spec, checkpoint)
    tf.keras.utils.set_random_seed(spec.random_seed + state["epoch"])

    # A resumed run draws new shuffles and augmentations instead of replaying the first epochs.
    data_spec = spec.model_copy(update={"random_seed": spec.random_seed + state["epoch"]})
    dataset = make_dataset(data_spec, training=True)   # BpnetError on bad data, before any write
    steps_per_epoch = spec.steps_per_epoch or max(
        1, count_samples(spec) // spec.dataloader.batch_size)
    with strategy.scope():
        if checkpoint:
            model, pretrained = with_regularizer(load_model(checkpoint), spec.model), None
        else:
            model, pretrained = initial_model(spec)
        optimizer = make_optimizer(spec.optimizer)
        optimizer.build(model.trainable_variables)
        restored = restore_optimizer(optimizer, checkpoint) if checkpoint else None
    step_fn = make_train_step(model, optimizer, strategy)
    write_text_atomic(results_dir / "spec.yaml", spec_to_yaml(spec))

    loop = _Loop(spec, model, optimizer, step_fn, strategy.experimental_distribute_dataset(dataset),
                 steps_per_epoch, state, results_dir, log)
    emit(log, STAGE, "start", epoch=state["epoch"], num_epochs=spec.num_epoch,
         num_steps=spec.num_epoch * steps_per_epoch, steps_per_epoch=steps_per_epoch,
         parameter_count=count_params(model), resumed_from_epoch=state["epoch"] or None,
         optimizer_state_restored=restored, pretrained=pretrained,
         message=_start_message(state, checkpoint, pretrained))
    with data_errors():   # a corrupt image found by a pipeline worker -> its BpnetError
        loop.run()

    save_model(model, results_dir / MODEL_FILE, card_from=spec.pretrained_weights)
    summary = loop.summary(pretrained, time.time() - started, results_dir / MODEL_FILE)
    write_json_atomic(results_dir / SUMMARY_FILE, summary)
    emit(log, STAGE, "done", epoch=state["epoch"], num_epochs=spec.num_epoch,
         loss=summary["final_loss"], fraction=1.0, model_path=str(results_dir / MODEL_FILE),
         message=f"trained {state['epoch']} epochs, final loss {summary['final_loss']:.4g}")
    return summary


class _Loop:
    """The epoch/step loop and its bookkeeping (state survives in checkpoints)."""

    def __init__(self, spec, model, optimizer, step_fn, dataset, steps_per_epoch, state,
                 results_dir, log):
        self.spec, self.model, self.optimizer, self.step_fn = spec, model, optimizer, step_fn
        self.dataset, self.iterator = dataset, iter(dataset)
        self.steps_per_epoch, self.state = steps_per_epoch, state
        self.results_dir, self.log = results_dir, log
        self.total_steps = spec.num_epoch * steps_per_epoch
        self.resumed_from = state["epoch"]
        self.first_step_of_run = state["global_step"]
        # Throughput excludes this run's first step, which traces and compiles the graph.
        self.steady_steps, self.steady_time_s = 0, 0.0
        self.last_event_time = 0.0
        self.last_regularization_loss = None

    def run(self):
        for epoch in range(self.state["epoch"] + 1, self.spec.num_epoch + 1):
            losses = [self.train_one_step(epoch, i) for i in range(1, self.steps_per_epoch + 1)]
            self.state["epoch"] = epoch
            self.state["epoch_losses"].append(float(np.mean(losses)))
            if epoch % self.spec.checkpoint_n_epoch == 0 or epoch == self.spec.num_epoch:
                # Saved before epoch_end is emitted, so a cancel on that event keeps this epoch.
                path = save_checkpoint(self.model, self.optimizer, self.state, self.spec,
                                       self.results_dir)
                emit(self.log, STAGE, "checkpoint", epoch=epoch, path=str(path))
            emit(self.log, STAGE, "epoch_end", epoch=epoch, num_epochs=self.spec.num_epoch,
                 loss=self.state["epoch_losses"][-1], step=self.state["global_step"],
                 num_steps=self.total_steps, fraction=self.state["global_step"] / self.total_steps,
                 eta_s=self.eta_s())

    def train_one_step(self, epoch, step_in_epoch):
        lr = learning_rate_at(self.state["global_step"], self.total_steps,
                              self.spec.optimizer.learning_rate_schedule)
        self.optimizer.learning_rate.assign(lr)
        t0 = time.perf_counter()
        task_loss, regularization_loss = self.step_fn(self.next_batch())
        loss = float(task_loss)   # also waits for the step, so the timing below is real
        elapsed = time.perf_counter() - t0
        if not math.isfinite(loss):
            raise BpnetError(
                f"training diverged: loss is {loss} at epoch {epoch}, step {step_in_epoch}; lower "
                f"optimizer.learning_rate_schedule.base_learning_rate (now "
                f"{self.spec.optimizer.learning_rate_schedule.base_learning_rate})")
        if self.state["global_step"] > self.first_step_of_run:
            self.steady_steps += 1
            self.steady_time_s += elapsed
        self.state["global_step"] += 1
        self.state["train_time_s"] += elapsed
        self.last_regularization_loss = float(regularization_loss)
        if self.state["first_loss"] is None:
            self.state["first_loss"] = loss
        now = time.time()
        if (step_in_epoch in (1, self.steps_per_epoch)
                or now - self.last_event_time >= STEP_EVENT_INTERVAL_S):
            self.last_event_time = now
            emit(self.log, STAGE, "step", epoch=epoch, num_epochs=self.spec.num_epoch,
                 step=self.state["global_step"], num_steps=self.total_steps, loss=loss, lr=lr,
                 regularization_loss=self.last_regularization_loss,
                 fraction=self.state["global_step"] / self.total_steps, eta_s=self.eta_s(),
                 images_per_s=self.images_per_s())
        return loss

    def next_batch(self):
        try:
            return next(self.iterator)
        except StopIteration:   # a finite dataset: start the next pass
            self.iterator = iter(self.dataset)
            return next(self.iterator)

    def images_per_s(self):
        if not self.steady_steps:
            return None
        return self.steady_steps * self.spec.dataloader.batch_size / self.steady_time_s

    def eta_s(self):
        if not self.steady_steps:
            return None
        remaining = self.total_steps - self.state["global_step"]
        return remaining * self.steady_time_s / self.steady_steps

    def summary(self, pretrained, run_time_s, model_path):
        losses = self.state["epoch_losses"]
        return {
            "epochs": self.state["epoch"],
            "num_epoch": self.spec.num_epoch,
            "steps": self.state["global_step"],
            "steps_per_epoch": self.steps_per_epoch,
            "batch_size": self.spec.dataloader.batch_size,
            "input_hw": list(self.spec.dataloader.image_shape),
            "first_step_loss": self.state["first_loss"],
            "first_epoch_loss": losses[0] if losses else None,
            "final_loss": losses[-1] if losses else None,
            "epoch_losses": losses,
            "final_regularization_loss": self.last_regularization_loss,
            "images_per_s": self.images_per_s(),
            "parameter_count": count_params(self.model),
            "stages": num_stages(self.model),
            "resumed_from_epoch": self.resumed_from or None,
            "pretrained": pretrained,
            "time_s": run_time_s,
            "train_time_s": self.state["train_time_s"],
            "model_path": str(model_path),
            "devices": [d.name for d in tf.config.list_logical_devices()
                        if d.device_type in ("CPU", "GPU")],
            "tensorflow_version": tf.__version__,
            "spec": self.spec.model_dump(mode="json"),
        }


def _start_message(state, checkpoint, pretrained):
    if checkpoint:
        return f"resuming after epoch {state['epoch']} from {checkpoint.name}"
    if pretrained:
        return (f"starting from {pretrained['path']} "
                f"({'graph and weights' if pretrained['load_graph'] else 'matching weights'})")
    return "starting from random initialisation"


# ---------------------------------------------------------------- model, optimizer, step

def pick_strategy():
    """All visible GPUs when there are several; otherwise TensorFlow's default (one device)."""
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def initial_model(spec):
    """(model, description of the pretrained weights or None) for a fresh run."""
    if spec.pretrained_weights is None:
        return build_model(spec.model, spec.dataloader.image_shape, spec.dataloader.skeleton), None
    path = spec.pretrained_weights
    if spec.load_graph:
        model = with_regularizer(load_model(path), spec.model)
        heat = model.get_layer("stage1_heatmaps").filters
        wanted = load_skeleton(spec.dataloader.skeleton).num_heatmaps
        if heat != wanted:
            raise BpnetError(f"pretrained_weights {path}: the model predicts {heat} heatmaps but skeleton "
                             f"{spec.dataloader.skeleton!r} has {wanted}")
        return model, {"path": str(path), "load_graph": True, "stages": num_stages(model)}
    model = build_model(spec.model, spec.dataloader.image_shape, spec.dataloader.skeleton)
    matched, skipped = transfer_weights(load_keras_model(path, "pretrained_weights"), model)
    if not matched:
        raise BpnetError(f"pretrained_weights {path}: no layer matches the spec's model by name "
                         f"and weight shapes (is it a model of another backbone_width?)")
    return model, {"path": str(path), "load_graph": False, "layers_matched": len(matched),
                   "layers_skipped": skipped}


def make_optimizer(optimizer_spec):
    lr = optimizer_spec.learning_rate_schedule.base_learning_rate
    if optimizer_spec.type == "sgd":
        return tf.keras.optimizers.SGD(learning_rate=lr, momentum=optimizer_spec.momentum)
    return tf.keras.optimizers.Adam(learning_rate=lr, beta_1=optimizer_spec.momentum)


def make_train_step(model, optimizer, strategy):
    """A compiled step: batch -> (task loss, regularization loss), averaged over replicas."""
    replicas = strategy.num_replicas_in_sync
    output_names = list(model.output_names)
    order = [output_names.index(f"stage{k}_{kind}") for k in range(1, num_stages(model) + 1)
             for kind in ("heatmaps", "pafs")]

    def replica_step(images, targets):
        with tf.GradientTape() as tape:
            outputs = model(images, training=True)
            outputs = [outputs[i] for i in order]   # [stage1_heatmaps, stage1_pafs, ...]
            task_loss, _ = bpnet_loss(outputs, targets["heatmaps"], targets["pafs"],
                                      targets["mask"])
            regularization_loss = tf.add_n(model.losses) if model.losses else tf.constant(0.0)
            # Gradients are summed across replicas, so each contributes its share.
            objective = (task_loss + regularization_loss) / replicas
        gradients = tape.gradient(objective, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables))
        return task_loss, regularization_loss

    @tf.function(reduce_retracing=True, autograph=False)
    def step(batch):
        images, targets = batch
        task_loss, regularization_loss = strategy.run(replica_step, args=(images, targets))
        mean = tf.distribute.ReduceOp.MEAN
        return (strategy.reduce(mean, task_loss, axis=None),
                strategy.reduce(mean, regularization_loss, axis=None))

    return step


# ---------------------------------------------------------------- checkpoints

def new_state():
    return {"epoch": 0, "global_step": 0, "epoch_losses": [], "first_loss": None,
            "train_time_s": 0.0}


def checkpoint_path(results_dir, epoch):
    return Path(results_dir) / CHECKPOINT_DIR / f"epoch_{epoch:04d}.hdf5"


def latest_checkpoint(results_dir):
    paths = sorted((Path(results_dir) / CHECKPOINT_DIR).glob("epoch_*.hdf5"))
    return paths[-1] if paths else None


def save_checkpoint(model, optimizer, state, spec, results_dir):
    """Model + optimizer slots + loop state in one HDF5 file, written atomically."""
    path = checkpoint_path(results_dir, state["epoch"])
    with atomic_path(path) as tmp:
        write_hdf5(model, tmp)
        # Keras ignores extra groups when loading, so a checkpoint is also a plain model file.
        with h5py.File(tmp, "a") as f:
            group = f.create_group(STATE_GROUP)
            group.attrs["state"] = json.dumps(state)
            group.attrs["model_spec"] = json.dumps(spec.model.model_dump(mode="json"))
            group.attrs["optimizer_type"] = spec.optimizer.type
            for i, variable in enumerate(optimizer.variables):
                group.create_dataset(f"optimizer_{i:04d}", data=variable.numpy())
    for old in sorted(path.parent.glob("epoch_*.hdf5"))[:-KEEP_CHECKPOINTS]:
        old.unlink()
    return path


def read_checkpoint_state(path):
    try:
        with h5py.File(path, "r") as f:
            group = f[STATE_GROUP]
            state = json.loads(group.attrs["state"])
            state["model_spec"] = json.loads(group.attrs["model_spec"])
    except (OSError, KeyError, ValueError) as err:
        raise BpnetError(f"checkpoint {path} is unreadable or not a bpnet training checkpoint "
                         f"({err}); delete it to resume from an older one or use a new "
                         f"results dir") from None
    return state


def check_same_model(state, spec, checkpoint):
    saved = state.pop("model_spec")
    current = spec.model.model_dump(mode="json")
    # The regulariser may change between runs (it follows the spec); the architecture may not.
    ignored = {"regularization_type", "kernel_regularization_factor"}
    changed = [f"model.{k}: {saved.get(k)!r} in the checkpoint, {v!r} in the spec"
               for k, v in current.items() if k not in ignored and saved.get(k) != v]
    if changed and not spec.load_graph:
        raise BpnetError(f"results dir holds checkpoint {checkpoint} of a different model ("
                         + "; ".join(changed) + "); use a new results dir to start over")


def restore_optimizer(optimizer, path):
    """Put the checkpoint's optimizer slots back; False (and the fresh optimizer) if they do not
    fit, e.g. after switching between adam and sgd."""
    with h5py.File(path, "r") as f:
        group = f[STATE_GROUP]
        saved = [group[name][()] for name in sorted(group) if name.startswith("optimizer_")]
    variables = list(optimizer.variables)
    if len(saved) != len(variables) or any(
            np.shape(s) != tuple(v.shape) for s, v in zip(saved, variables)):
        return False
    for value, variable in zip(saved, variables):
        variable.assign(value)
    return True
