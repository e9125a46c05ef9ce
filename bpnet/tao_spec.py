"""TAO BodyPoseNet spec files, read as they are and translated into bpnet's typed specs.

TAO users keep their experiment specs (`bpnet_train_m1_coco.yaml`, `bpnet_retrain_m1_coco.yaml`),
inference specs (`infer_spec*.yaml`) and dataset spec (`coco_spec.json`). They are translated
here, once, into the same `TrainSpec` / `InferSpec` the native files give; the native specs keep
rejecting unknown keys. Every TAO field is either mapped to ours or reported once as
`ignored: <field> (<reason>)`; a field that is neither (a typo, a newer TAO field) is an error,
as in a native spec. docs/tao.md has the whole table.

A spec file is data: it is read with `yaml.safe_load` / `json.loads` and nothing in it is
executed (TAO's `__class_name__` keys name TAO's Python classes; here they are only checked).
Relative paths resolve against the file that holds them, as in native specs.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bpnet.errors import BpnetError
from bpnet.preprocess import STRIDE
from bpnet.specs import InferSpec, TrainSpec, load_yaml, parse_spec

CLASS_KEY = "__class_name__"
TFRECORDS = "TFRecords are not needed: bpnet reads the COCO annotations and images of dataset_specs.coco directly"
# Keys only a TAO file has: one of them makes a file a TAO spec.
TAO_TRAIN_KEYS = {CLASS_KEY, "checkpoint_dir", "log_every_n_secs", "summary_every_n_steps",
                  "validation_every_n_epoch", "max_ckpt_to_keep", "finetuning_config",
                  "use_stagewise_lr_multipliers", "loss", "inference_spec"}
TAO_DATALOADER_KEYS = {"dataset_config", "image_config", "pose_config", "normalization_params",
                       "augmentation_config", "label_processor_config"}
TAO_INFER_KEYS = {"model_path", "train_spec"}
TAO_ASPECT_DEFAULT = "adjust_network_input"      # TAO's inferencer default when the key is absent


@dataclass
class TaoSpec:
    """A translated TAO spec: the typed spec, the native dict it came from, and what was left out."""
    spec: object                         # TrainSpec or InferSpec
    native: dict                         # the equivalent native spec (paths as strings)
    notes: list = field(default_factory=list)   # "ignored: field (reason)" and "note: ..." lines
    checkpoint_dir: Optional[Path] = None       # TAO train spec: results folder when -r is not given
    model_path: Optional[Path] = None           # TAO infer spec: model when --model_filename is not given
    source: str = ""


class _Fields:
    """One mapping of a TAO file: every key read is marked, so leftovers can be reported."""

    def __init__(self, data, where, notes, file):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise BpnetError(f"TAO spec {file}: {where or '(top level)'} must be a mapping, got {data!r}")
        self.data, self.where, self.notes, self.file = data, where, notes, file
        self.seen = {CLASS_KEY}

    def path(self, key):
        if self.where.endswith(":"):          # the top of a file named in another spec
            return f"{self.where}{key}"
        return f"{self.where}.{key}" if self.where else key

    def has(self, key):
        return key in self.data

    def get(self, key, default=None):
        self.seen.add(key)
        value = self.data.get(key, default)
        return default if value is None else value

    def sub(self, key):
        self.seen.add(key)
        return _Fields(self.data.get(key), self.path(key), self.notes, self.file)

    def ignore(self, key, reason):
        """Report `key` once as ignored, when the file has it."""
        self.seen.add(key)
        if key in self.data:
            self.notes.append(f"ignored: {self.path(key)} ({reason})")

    def ignore_unless(self, key, harmless, reason):
        """Silent when the value means what bpnet does anyway, else reported as ignored."""
        self.seen.add(key)
        if key in self.data and self.data[key] not in harmless:
            self.notes.append(f"ignored: {self.path(key)} = {self.data[key]!r} ({reason})")

    def error(self, key, message):
        return BpnetError(f"TAO spec {self.file}: {self.path(key)}: {message}")

    def finish(self):
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise BpnetError(f"TAO spec {self.file}: unknown field(s) {', '.join(self.path(k) for k in unknown)}; "
                             "not a TAO BodyPoseNet field (check the spelling; docs/tao.md lists them)")


def _resolve(path, base):
    path = Path(str(path))
    return path if path.is_absolute() else (base / path).resolve()


# ---------------------------------------------------------------- detection

def is_tao_train_spec(data):
    dataloader = data.get("dataloader")
    return bool(TAO_TRAIN_KEYS & set(data)) or (
        isinstance(dataloader, dict) and bool(TAO_DATALOADER_KEYS & set(dataloader)))


def is_tao_infer_spec(data):
    return bool(TAO_INFER_KEYS & set(data)) or data.get("keep_aspect_ratio_mode", "") is None


# ---------------------------------------------------------------- coco_spec.json

def read_coco_spec(path):
    """The JSON of a TAO dataset spec, with a clear error when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise BpnetError(f"TAO dataset spec not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BpnetError(f"TAO dataset spec {path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise BpnetError(f"TAO dataset spec {path} must be a JSON object")
    return data


def coco_spec_dataset(path, split="train", notes=None):
    """(annotations, images, min_keypoints) of `train_data` or `test_data` of a coco_spec.json."""
    path = Path(path).resolve()
    notes = [] if notes is None else notes
    spec = _Fields(read_coco_spec(path), f"{path.name}:", notes, path)
    if spec.get("dataset", "coco") != "coco":
        raise spec.error("dataset", f"{spec.data['dataset']!r}: bpnet reads COCO-format datasets only")
    root = _resolve(spec.get("root_directory_path", "."), path.parent)
    part = spec.sub(f"{split}_data")
    if not part.data:
        raise spec.error(f"{split}_data", "missing: it names the images and annotations of this split")
    annotations = _resolve(part.get("annotation_root_dir_path", ""), root)
    images = _resolve(part.get("images_root_dir_path", ""), root)
    part.ignore("mask_root_dir_path", "masks of crowd and unlabelled people are computed in memory "
                                      "from the annotations, never stored as images")
    part.finish()
    other = "test_data" if split == "train" else "train_data"
    spec.seen.add(other)
    filters = spec.sub("data_filtering_params")
    min_keypoints = int(filters.get("min_acceptable_kpts", 1))
    filters.ignore("min_acceptable_height", "people are kept by labelled keypoints only: min_acceptable_kpts")
    filters.ignore("min_acceptable_width", "people are kept by labelled keypoints only: min_acceptable_kpts")
    filters.ignore("min_acceptable_interperson_dist_ratio",
                   "every kept person is a training target; crowded ones are not dropped")
    filters.finish()
    spec.ignore("duplicate_data_with_each_person_as_center",
                "each sample is centred on one of its people, chosen at random per epoch")
    categories = spec.get("categories", [])
    if categories and not any(c.get("name") == "person" for c in categories if isinstance(c, dict)):
        raise spec.error("categories", "no 'person' category; bpnet trains COCO person keypoints")
    spec.ignore("categories", "the COCO keypoint order is fixed by the skeleton, bpnet_18joints")
    spec.ignore("visibility_flags", "COCO's flags are used as they are: 0 unlabelled, 1 occluded, 2 visible")
    spec.finish()
    return annotations, images, min_keypoints


# ---------------------------------------------------------------- training spec

def translate_train_spec(data, file):
    """A TAO experiment spec (dict) -> TaoSpec with a validated TrainSpec."""
    file = Path(file).resolve()
    base, notes = file.parent, []
    top = _Fields(data, "", notes, file)
    native = {}
    checkpoint_dir = top.get("checkpoint_dir")
    for key in ("num_epoch", "checkpoint_n_epoch", "random_seed", "load_graph"):
        if top.has(key):
            native[key] = top.get(key)
    if top.get("pretrained_weights"):
        native["pretrained_weights"] = str(_resolve(top.get("pretrained_weights"), base))
    top.ignore("log_every_n_secs", "bpnet logs every step to events.jsonl and the progress bar")
    top.ignore("summary_every_n_steps", "no TensorBoard summaries; the loss of every step is in events.jsonl")
    top.ignore("infrequent_summary_every_n_steps", "no TensorBoard summaries")
    top.ignore("validation_every_n_epoch", "no validation while training; run `bpnet evaluate` on the model")
    top.ignore("max_ckpt_to_keep", "bpnet keeps its newest checkpoints, enough to resume, and the final model")
    finetune = top.sub("finetuning_config")
    if finetune.get("is_finetune_exp", False):
        notes.append("ignored: finetuning_config (to continue a run, re-run `bpnet train` on the same "
                     "results folder; to start from a model, set pretrained_weights)")
    for key in ("is_finetune_exp", "checkpoint_path", "ckpt_epoch_num"):
        finetune.seen.add(key)
    finetune.finish()
    top.ignore_unless("use_stagewise_lr_multipliers", (False,), "one learning rate for every layer")
    top.ignore("inference_spec", "TAO used it for validation while training; give it to `bpnet evaluate`")
    top.sub("loss").finish()           # BpNetLoss: the masked L2 over every stage, which bpnet uses
    native["dataloader"] = _dataloader(top.sub("dataloader"), base, notes)
    native["model"] = _model(top.sub("model"))
    native["optimizer"] = _optimizer(top.sub("optimizer"))
    top.finish()
    spec = parse_spec(TrainSpec, native, f"training spec {file} (translated from TAO)")
    return TaoSpec(spec, native, notes, _resolve(checkpoint_dir, base) if checkpoint_dir else None,
                   source=str(file))


def _dataloader(dl, base, notes):
    out = {}
    if dl.has("batch_size"):
        out["batch_size"] = dl.get("batch_size")
    image = dl.sub("image_config")
    dims = image.sub("image_dims")
    if dims.has("height") or dims.has("width"):
        out["image_shape"] = [int(dims.get("height", 256)), int(dims.get("width", 256))]
    if int(dims.get("channels", 3)) != 3:
        raise dims.error("channels", f"{dims.data['channels']}: BodyPoseNet takes 3-channel images")
    dims.finish()
    image.ignore("image_encoding", "images are decoded by content: JPEG, PNG, BMP")
    image.finish()
    pose = dl.sub("pose_config")
    if pose.get("pose_config_path"):
        stem = Path(str(pose.get("pose_config_path"))).stem
        if stem != "bpnet_18joints":
            raise pose.error("pose_config_path", f"{stem}: bpnet bundles the bpnet_18joints pose "
                                                 "configuration only")
        out["skeleton"] = stem
    hw = out.get("image_shape", [256, 256])
    target = pose.get("target_shape")
    if target and [int(t) for t in target] != [hw[0] // STRIDE, hw[1] // STRIDE]:
        notes.append(f"ignored: dataloader.pose_config.target_shape = {list(target)} (bpnet's maps are "
                     f"always the input size / {STRIDE}: {[hw[0] // STRIDE, hw[1] // STRIDE]})")
    pose.finish()
    out["dataset"] = _dataset(dl.sub("dataset_config"), base, notes)
    norm = dl.sub("normalization_params")
    normalization = {k: list(norm.get(k)) for k in ("image_scale", "image_offset") if norm.has(k)}
    if normalization:
        out["normalization"] = normalization
    norm.ignore("mask_scale", "masks are computed in memory, not read from image files")
    norm.ignore("mask_offset", "masks are computed in memory, not read from image files")
    norm.finish()
    out["augmentation"] = _augmentation(dl.sub("augmentation_config"), hw, notes)
    labels = dl.sub("label_processor_config")
    targets = {}
    if labels.has("heatmap_gaussian_sigma"):
        targets["heatmap_sigma_px"] = labels.get("heatmap_gaussian_sigma")   # input pixels in both
    if labels.has("paf_ortho_dist_thresh"):
        # TAO's threshold is in output cells (it multiplies it by the stride); ours in input pixels.
        targets["paf_width_px"] = float(labels.get("paf_ortho_dist_thresh")) * STRIDE
    labels.ignore("paf_gaussian_sigma", "bpnet's PAF is a hard band of paf_width_px, not Gaussian-weighted")
    labels.finish()
    if targets:
        out["targets"] = targets
    dl.ignore("shuffle_buffer_size", "bpnet shuffles the whole sample list every epoch")
    dl.finish()
    return out


def _dataset(ds, base, notes):
    for key in ("root_data_path", "train_records_folder_path", "train_records_path",
                "val_records_folder_path", "val_records_path"):
        ds.ignore(key, TFRECORDS)
    specs = ds.sub("dataset_specs")
    coco = specs.get("coco")
    if not coco:
        raise specs.error("coco", "missing: bpnet needs the coco_spec.json that names the COCO "
                                  "annotations and images")
    specs.finish()
    ds.finish()
    if not _resolve(coco, base).is_file():
        raise specs.error("coco", f"{coco}: file not found (TAO's specs name paths inside TAO's container, "
                                  "e.g. /workspace/...: give the path of your copy of coco_spec.json, absolute or "
                                  "relative to this spec file)")
    annotations, images, min_keypoints = coco_spec_dataset(_resolve(coco, base), "train", notes)
    return {"annotations": str(annotations), "images": str(images), "min_keypoints": min_keypoints}


def _augmentation(aug, input_hw, notes):
    mode = aug.get("spatial_augmentation_mode", "person_centric")
    if mode != "person_centric":
        notes.append(f"ignored: augmentation_config.spatial_augmentation_mode = {mode!r} (bpnet's "
                     "augmentation is always person-centric)")
    p = aug.sub("spatial_aug_params")
    out = {}
    if p.has("flip_lr_prob"):
        out["flip_lr_prob"] = p.get("flip_lr_prob")
    p.ignore_unless("flip_tb_prob", (0, 0.0), "no top/bottom flip: people are upright")
    if p.has("rotate_deg_max") or p.has("rotate_deg_min"):
        out["rotate_deg_max"] = max(abs(float(p.get("rotate_deg_max", 0))), abs(float(p.get("rotate_deg_min", 0))))
    zoom_prob = float(p.get("zoom_prob", 0.0))
    if zoom_prob == 0:
        out["zoom_ratio_min"] = out["zoom_ratio_max"] = 1.0   # TAO never zooms then
        p.seen.update({"zoom_ratio_min", "zoom_ratio_max"})
    else:
        out["zoom_ratio_min"] = p.get("zoom_ratio_min", 1.0)
        out["zoom_ratio_max"] = p.get("zoom_ratio_max", 1.0)
        if zoom_prob < 1:
            notes.append(f"ignored: augmentation_config.spatial_aug_params.zoom_prob = {zoom_prob} "
                         "(bpnet zooms every sample within the zoom ratio range)")
    if p.get("use_translate_ratio", False):
        out["translate_ratio_max"] = max(abs(float(p.get("translate_ratio_max", 0))),
                                         abs(float(p.get("translate_ratio_min", 0))))
        for key in ("translate_max_x", "translate_min_x", "translate_max_y", "translate_min_y"):
            p.seen.add(key)
    else:
        # TAO shifts by pixels; bpnet by a fraction of the input size (the larger of x and y).
        ratios = [max(abs(float(p.get(f"translate_max_{a}", 0))), abs(float(p.get(f"translate_min_{a}", 0)))) / size
                  for a, size in (("x", input_hw[1]), ("y", input_hw[0]))]
        if any(p.has(f"translate_{m}_{a}") for m in ("max", "min") for a in "xy"):
            out["translate_ratio_max"] = round(min(1.0, max(ratios)), 6)
        for key in ("translate_ratio_max", "translate_ratio_min"):
            p.seen.add(key)
    if p.has("target_person_scale"):
        out["target_person_scale"] = p.get("target_person_scale")
    p.finish()
    aug.ignore_unless("identity_spatial_aug_params", (None, {}),
                      "bpnet's evaluation never augments, so no identity parameters are needed")
    aug.finish()
    return out


def _model(m):
    out = {}
    backbone = m.sub("backbone_attributes")
    if backbone.get("architecture", "vgg") != "vgg":
        raise backbone.error("architecture", f"{backbone.data['architecture']!r}: bpnet builds the VGG backbone only")
    out["backbone"] = "vgg"
    backbone.ignore_unless("mtype", ("default",), "bpnet builds TAO's default VGG variant only")
    backbone.ignore("use_bias", "one use_bias for the whole network: model.use_bias")
    backbone.finish()
    for key in ("stages", "heat_channels", "paf_channels", "use_bias", "regularization_type",
                "kernel_regularization_factor"):
        if m.has(key):
            out[key] = m.get(key)
    if m.get("use_self_attention", False):
        raise m.error("use_self_attention", "True: bpnet has no self-attention variant")
    m.ignore_unless("data_format", ("channels_last",), "bpnet trains channels_last; "
                                                       "`bpnet export --data_format channels_first` gives an NCHW input")
    m.ignore_unless("bias_regularization_factor", (0, 0.0), "biases are never regularised")
    m.ignore("kernel_initializer", "bpnet initialises convolutions its own way, see bpnet/model.py")
    m.finish()
    return out


def _optimizer(o):
    name = o.data.get(CLASS_KEY, "WeightedMomentumOptimizer")
    out = {"type": "sgd" if "Momentum" in str(name) else "adam"}
    if o.has("momentum"):
        out["momentum"] = o.get("momentum")
    schedule = o.sub("learning_rate_schedule")
    lr = {k: schedule.get(k) for k in ("base_learning_rate", "min_learning_rate", "soft_start", "annealing")
          if schedule.has(k)}
    schedule.ignore_unless("last_step", (None,), "the last step follows from num_epoch and the data")
    schedule.finish()
    if lr:
        out["learning_rate_schedule"] = lr
    o.ignore_unless("use_nesterov", (False,), "plain momentum")
    o.ignore_unless("grad_weights_dict", (None, {}), "every layer gets the same gradient weight")
    o.ignore_unless("weight_default_value", (1, 1.0), "every layer gets the same gradient weight")
    o.finish()
    return out


# ---------------------------------------------------------------- inference spec

def translate_infer_spec(data, file):
    """A TAO infer_spec*.yaml (dict) -> TaoSpec with a validated InferSpec."""
    file = Path(file).resolve()
    base, notes = file.parent, []
    top = _Fields(data, "", notes, file)
    native = {}
    for key in ("input_shape", "output_stage_to_use", "output_upsampling_factor", "heatmap_threshold",
                "paf_threshold", "multi_scale_inference", "scales"):
        if top.has(key):
            native[key] = top.get(key)
    if native.get("output_stage_to_use") is None:
        native.pop("output_stage_to_use", None)
    top.seen.add("keep_aspect_ratio_mode")
    mode = data.get("keep_aspect_ratio_mode", TAO_ASPECT_DEFAULT)
    if mode is None:
        notes.append("ignored: keep_aspect_ratio_mode = None (stretching distorts people; bpnet keeps "
                     "the aspect ratio with pad_image_input, at the same fixed input size)")
        mode = "pad_image_input"
    native["keep_aspect_ratio_mode"] = mode
    model_path = top.get("model_path")
    train_spec = top.get("train_spec")
    if train_spec:
        native.update(_normalization_of(_resolve(train_spec, base), notes))
    top.finish()
    spec = parse_spec(InferSpec, native, f"inference spec {file} (translated from TAO)")
    return TaoSpec(spec, native, notes, model_path=_resolve(model_path, base) if model_path else None,
                   source=str(file))


def _normalization_of(train_spec_path, notes):
    """The image normalisation (and skeleton) the TAO training spec of an infer spec used."""
    if not train_spec_path.is_file():
        notes.append(f"note: train_spec {train_spec_path} not found: using the default normalisation "
                     "(pixel / 256 - 0.5, TAO's default too)")
        return {}
    tao = load_yaml(train_spec_path, "TAO training spec (train_spec of the inference spec)")
    if not is_tao_train_spec(tao):
        native = parse_spec(TrainSpec, tao, f"training spec {train_spec_path}")
        return {"normalization": native.dataloader.normalization.model_dump(), "skeleton": native.dataloader.skeleton}
    params = (tao.get("dataloader") or {}).get("normalization_params") or {}
    return {"normalization": {k: list(params[k]) for k in ("image_scale", "image_offset") if k in params}}


# ---------------------------------------------------------------- entry points

def load_train_spec_any(path):
    """A native or TAO training spec file -> TaoSpec (no notes for a native file)."""
    from bpnet.specs import load_train_spec

    return _load(path, "training spec", is_tao_train_spec, translate_train_spec, load_train_spec)


def load_infer_spec_any(path):
    """A native or TAO inference spec file -> TaoSpec."""
    from bpnet.specs import load_infer_spec

    return _load(path, "inference spec", is_tao_infer_spec, translate_infer_spec, load_infer_spec)


def _load(path, what, is_tao, translate, load_native):
    data = load_yaml(path, what)
    if is_tao(data):
        return translate(data, path)
    spec = load_native(path)
    return TaoSpec(spec, spec.model_dump(mode="json"), source=str(path))


def load_any_spec(path):
    """Either kind of spec, native or TAO, told apart by its fields (`bpnet spec`, `export -e`)."""
    data = load_yaml(path)
    if is_tao_train_spec(data):
        return translate_train_spec(data, path)
    if is_tao_infer_spec(data):
        return translate_infer_spec(data, path)
    return load_train_spec_any(path) if "dataloader" in data else load_infer_spec_any(path)


def print_notes(translated, out=None, brief=False):
    """The fields a TAO spec had that bpnet does not use, one line per reason (stderr).
    `brief`: one line only, for verbs that read a spec only for a few fields (export)."""
    import sys

    out = out or sys.stderr
    if not translated.notes:
        return
    if brief:
        print(f"note: read {translated.source} as a TAO spec ({len(translated.notes)} field(s) not used; "
              f"`bpnet spec --from-tao {translated.source}` lists them)", file=out)
        return
    print(f"TAO spec {translated.source}: {len(translated.notes)} field(s) not used:", file=out)
    for line in grouped_notes(translated.notes):
        print(f"  {line}", file=out)


def grouped_notes(notes):
    """Notes with the same reason joined: `ignored: a, b (why)`; other notes as they are."""
    groups, lines = {}, []
    for note in notes:
        if note.startswith("ignored: ") and note.endswith(")") and " (" in note:
            field_text, reason = note[len("ignored: "):].split(" (", 1)
            if reason not in groups:
                groups[reason] = []
                lines.append(reason)
            groups[reason].append(field_text)
        else:
            lines.append(note)
    return [f"ignored: {', '.join(groups[line])} ({line}" if line in groups else line for line in lines]
