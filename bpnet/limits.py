"""Every limit and shared default of the engine, in one place (pure Python, no imports).

The CLI, the run spec, the dashboard form and the engine functions import these names, and the
rules that are checked in more than one layer are functions here returning the one message, so a
limit cannot drift between layers (tests/test_limits.py checks each is enforced the same way).
Messages name the value and what is allowed; the caller prefixes the field it came from.
"""

import math

# The network's output stride: heatmaps and PAFs have one cell per STRIDE x STRIDE input pixels.
STRIDE = 8

# Stages of a BodyPoseNet: one initial stage and 1..6 refinement stages (TAO's range).
MIN_STAGES, MAX_STAGES = 2, 7
DEFAULT_STAGES = 3

# Largest side of a network input the dashboard offers (memory of one image's maps).
MAX_SIDE_PX = 2048

# INT8 post-training calibration.
CALIBRATORS = ("entropy", "minmax", "percentile")
DEFAULT_CALIBRATOR = "entropy"           # bpnet export's, as TAO's (TensorRT's EntropyCalibration2)
# The explorer's INT8 points when the model card recommends none: min-max clips nothing, so it
# cannot collapse a network's maps the way entropy collapsed the bundled one's (AP 0.176 -> 0.000,
# docs/pretrained.md).
EXPLORER_CALIBRATOR = "minmax"
DEFAULT_PERCENTILE = 99.99
# What an INT8 model computes from a float model and calibration images: part of every INT8
# stage's cache key, so results of an older method are not reused. 2: ReLU6 folded into the
# conv ranges (calibrate/qdq.py), concat inputs equalized (calibrate/equalize.py), calibration
# images prepared as the model card says.
INT8_METHOD_VERSION = 2
MAX_CALIBRATION_BATCH_SIZE = 256
MAX_CALIBRATION_BATCHES = 10000

# `bpnet sample-calibration` (TAO's sample_calibration_images.py defaults, which the workflow
# uses): 500 images with at least one person, a person counting with 5 labelled keypoints.
DEFAULT_CALIBRATION_IMAGES = 500
DEFAULT_CALIBRATION_MIN_PERSONS = 1
DEFAULT_CALIBRATION_MIN_KEYPOINTS = 5

# Pruning (TAO's `prune` options).
EQUALIZATIONS = ("union", "intersection", "arithmetic_mean", "geometric_mean")
NORMALIZERS = ("max", "L2")
DEFAULT_PRUNE_THRESHOLD = 0.1
DEFAULT_PRUNE_GRANULARITY = 8        # kept filters per layer: a multiple of this (fast GPU kernels)
DEFAULT_PRUNE_MIN_FILTERS = 16       # and at least this many
MAX_PRUNE_THRESHOLD = 10.0
USEFUL_PRUNE_THRESHOLDS = "0.05-3.0"

PRECISIONS = ("fp32", "fp16", "int8")

# Run specs and the New-run form.
MAX_EPOCHS = 10000
MAX_AP_DROP_POINTS = 100.0      # AP budgets and gate thresholds, in AP points
MAX_SEARCH_ITERS = 30
DEFAULT_AP_BUDGET = 2.0         # the AP-budget search: largest AP drop (points) from the unpruned model
DEFAULT_SEARCH_ITERS = 6
DEFAULT_SEARCH_THRESHOLD_RANGE = (0.05, 1.0)   # the prune thresholds the search brackets within
DEFAULT_GATE_MAX_AP_DROP = 2.0  # an INT8/FP16 result losing more AP points fails the gate
DEFAULT_INT8_MAX_DROP = 1.0     # INT8 accuracy control's budget (points), as NNCF's default 1%

# `bpnet export` input size when neither -d nor an inference spec gives one: the workflow's
# deployment size (its INT8 export and strict evaluation use 288x384). TAO's own default was the
# training size 256x256, which the workflow overrode every time.
DEFAULT_EXPORT_HW = (288, 384)


def stages_problem(value):
    """None when `value` is an allowed stage count, else why not."""
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_STAGES <= value <= MAX_STAGES:
        return (f"{value!r} is not allowed; stages must be between {MIN_STAGES} and {MAX_STAGES} "
                "(one initial stage and up to six refinement stages)")
    return None


def prune_threshold_problem(value, sweep=False):
    """None when `value` is an allowed prune threshold, else why not.

    The engine (`bpnet prune`, TAO's `-pth`) accepts 0: only filters whose norm is exactly 0 go.
    A sweep (run spec, dashboard) refuses 0, since it always evaluates the unpruned model too.
    """
    low = "above 0" if sweep else "from 0"
    allowed = (f"allowed {low} up to {MAX_PRUNE_THRESHOLD:g} ({USEFUL_PRUNE_THRESHOLDS} is the useful "
               "range" + ("; the unpruned model is always evaluated too)" if sweep else ")"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{value!r} is not a number; {allowed}"
    if not math.isfinite(value) or value < 0 or (sweep and value == 0) or value > MAX_PRUNE_THRESHOLD:
        return f"{value:g} is out of range; {allowed}"
    return None


def calibration_count_problem(found, batch_size, batches):
    """None when `found` calibration images serve batch_size x batches, else why not (the caller
    prefixes the field and the folder or file: '<field>: <folder> holds ...')."""
    needed = int(batch_size) * int(batches)
    if found < needed:
        return (f"holds {found} images, fewer than batch_size x batches = {batch_size} x {batches} = "
                f"{needed}")
    return None


# A benchmark record is flagged "under load" when the 1-minute load average exceeds this many
# runnable tasks per logical core: more runnable than cores means someone waits. The benchmark's
# own threads count too (a 2-thread run on 2 idle cores reads about 2), so a lower line would
# flag every quiet run.
UNDER_LOAD_PER_CORE = 1.0


# The gate ranks a failed INT8 model's layers one at a time (each quantized alone, one ONNX Runtime
# session and run per layer) only up to this many quantized layers. Measured on the bundled
# MobileNetV2 (201 quantized layers, 288x384, 2 cores): 4-17 s per layer, i.e. 15-60 minutes per
# gate, longer than everything else in the default run together. Larger models get the verdict
# and the other remedies at once; `bpnet quantize` (accuracy control) ranks them in one pass.
GATE_MAX_RANKED_LAYERS = 64
