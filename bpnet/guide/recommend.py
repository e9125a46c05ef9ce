"""Recommendations with reasons: the seed's rules of thumb applied to dataset statistics.

Pure functions: `dataset_stats` output in, `Advice` records out. Every piece of advice names the
spec field it is about, the recommended value, the recommended range and the reasons, so the
dashboard can show them next to the field and the CLI can print them.

The seed's measurements behind the rules (BodyPoseNet on COCO):
- 224x320 -> 288x384 gains about 7-10% AP on medium people, 320x448 another 7-10%; large people
  barely change. So the share of medium (and small) people sets the input height.
- Crowded scenes need a taller input: people who share an image are smaller and their limbs
  overlap in the part-affinity fields.
- Width follows the deployment aspect ratio; H and W are multiples of 8 (the stride), better of
  16/32/64 (friendlier to convolution kernels and TensorRT tactics).
"""

from dataclasses import asdict, dataclass

from bpnet.errors import BpnetError
from bpnet.limits import DEFAULT_STAGES, MAX_STAGES, MIN_STAGES
from bpnet.preprocess import STRIDE

# Input heights in increasing cost; the first three are the seed's measured resolutions.
HEIGHT_LEVELS = (224, 288, 320, 368, 416)
PREFERRED_MULTIPLES = (64, 32, 16, STRIDE)
MAX_ROUNDING_ERROR = 0.06          # relative change of the aspect ratio we accept to get a rounder W
MEDIUM_SHARE_FOR_288 = 0.25        # below: mostly large people, resolution barely matters
MEDIUM_SHARE_FOR_320 = 0.5         # above: most scored people gain from every resolution step
CROWDED_IMAGE_PEOPLE = 5           # an image with this many people or more counts as crowded
CROWDED_SHARE = 0.25               # this share of crowded images (among those with people) -> taller
SMALL_SHARE_NOTE = 0.2
DEFAULT_CAL_BATCH_SIZE = 8
DEFAULT_CAL_BATCHES = 10


@dataclass(frozen=True)
class Advice:
    field: str              # spec field path, e.g. "dataloader.image_shape"
    value: object           # the recommended value
    recommended_range: object   # (low, high) or a short text; None when a single value is advised
    reasons: tuple          # plain sentences, most important first

    def to_dict(self):
        return asdict(self)


def round_dimension(value_px, multiples=PREFERRED_MULTIPLES, max_rel_error=MAX_ROUNDING_ERROR):
    """Round a side length to the largest preferred multiple within `max_rel_error` of it.

    Returns (rounded_px, multiple). The stride (8) always fits, so a valid size is guaranteed.
    """
    if value_px <= 0:
        raise BpnetError(f"input side must be positive, got {value_px}")
    for multiple in multiples:
        rounded = max(multiple, int(round(value_px / multiple)) * multiple)
        if abs(rounded - value_px) / value_px <= max_rel_error or multiple == multiples[-1]:
            return rounded, multiple
    raise AssertionError("unreachable: the last multiple always returns")


def base_height_for_sizes(medium_share):
    """(height, reason) from the share of medium + small people (sizes at COCO's 640-px scale)."""
    pct = f"{medium_share:.0%}"
    if medium_share < MEDIUM_SHARE_FOR_288:
        return HEIGHT_LEVELS[0], (f"only {pct} of your people are medium or small; large people barely "
                                  f"change with resolution, so the cheapest input (height 224) keeps their AP")
    if medium_share < MEDIUM_SHARE_FOR_320:
        return HEIGHT_LEVELS[1], (f"{pct} of your people are medium or small; going from 224x320 to "
                                  f"288x384 gains about 7-10% AP on medium people")
    return HEIGHT_LEVELS[2], (f"{pct} of your people are medium or small; 320x448 gains another 7-10% AP on "
                              f"medium people over 288x384 (large people barely change)")


def crowded_share(stats):
    """Share of images with people that hold CROWDED_IMAGE_PEOPLE people or more."""
    with_people = stats["num_images_with_people"]
    if with_people == 0:
        return 0.0
    return stats["people_per_image_histogram"]["5+"] / with_people


def recommend_resolution(stats, deploy_aspect_ratio=None):
    """Input (H, W) for the training and inference specs, with the reasons.

    `deploy_aspect_ratio` is the W / H of the camera or video the model will run on; without it
    the dataset's median aspect ratio is used.
    """
    if deploy_aspect_ratio is not None and not 0.25 <= deploy_aspect_ratio <= 4:
        raise BpnetError(f"deployment aspect ratio (W/H) must be between 0.25 and 4, got {deploy_aspect_ratio}")
    reasons = []
    if stats["num_people"] == 0:
        height = HEIGHT_LEVELS[1]
        reasons.append("the annotations hold no person with keypoints, so the seed's default height 288 "
                       "is proposed; add labelled people before training")
    else:
        fractions = stats["area_ranges_at_640"]["fractions"]
        height, reason = base_height_for_sizes(fractions["medium"] + fractions["small"])
        reasons.append(reason)
        share = crowded_share(stats)
        if share >= CROWDED_SHARE:
            height = HEIGHT_LEVELS[HEIGHT_LEVELS.index(height) + 1]
            reasons.append(f"{share:.0%} of your images with people hold {CROWDED_IMAGE_PEOPLE} or more; "
                           f"crowded scenes need a taller input (one step up, to {height})")
        if fractions["small"] >= SMALL_SHARE_NOTE:
            reasons.append(f"{fractions['small']:.0%} of your people are smaller than 32x32 px; COCO keypoint "
                           f"AP does not score them and the network sees them only a few heatmap cells tall")
    if deploy_aspect_ratio is not None:
        aspect, aspect_source = deploy_aspect_ratio, "the deployment aspect ratio"
    else:
        aspect = stats["image_aspect_ratio"]["median"] or 4 / 3
        aspect_source = "your images' median aspect ratio (give the deployment one if it differs)"
    width, multiple = round_dimension(height * aspect)
    reasons.append(f"width {width} follows {aspect_source} W/H = {aspect:.2f}, rounded to a multiple of "
                   f"{multiple}; H and W must be multiples of 8, better of 16/32/64")
    # The range is for the height; the width follows it through the aspect ratio.
    return Advice("dataloader.image_shape", [height, width], (HEIGHT_LEVELS[0], HEIGHT_LEVELS[-1]),
                  tuple(reasons))


def recommend_calibration(stats, batch_size=DEFAULT_CAL_BATCH_SIZE, batches=DEFAULT_CAL_BATCHES):
    """How many calibration images: at least batch_size x batches, about 10-20% of the data."""
    if batch_size < 1 or batches < 1:
        raise BpnetError(f"calibration batch_size and batches must be >= 1, got {batch_size} and {batches}")
    needed = batch_size * batches
    pool = stats["num_images_with_people"]
    low, high = max(needed, round(0.10 * pool)), max(needed, round(0.20 * pool))
    value = max(needed, round(0.15 * pool))
    reasons = [f"calibration reads batch_size x batches = {batch_size} x {batches} = {needed} images, "
               f"so at least that many are needed",
               "about 10-20% of the training images, chosen among images with people "
               "(bpnet sample-calibration), represent the activation ranges well"]
    if needed > pool:
        reasons.append(f"your data has only {pool} images with people: lower batches to "
                       f"{max(1, pool // batch_size)} or add images")
    return Advice("calibration.num_images", value, (low, high), tuple(reasons))


def static_guidance():
    """The seed's ranges for fields that do not depend on the data."""
    return [
        Advice("prune.threshold", 0.05, (0.05, 3.0), (
            "start at 0.05 and raise it while the retrained accuracy holds; the AP-budget search "
            "(bpnet search) does this for you",
            "with the 'max' normaliser every threshold above 1.0 keeps only the minimum filters")),
        Advice("model.stages", DEFAULT_STAGES, (MIN_STAGES, MAX_STAGES), (
            "3 stages balance speed and accuracy; 2 is faster; more refinement stages add little AP "
            "for their cost",)),
        Advice("model.regularization_type", "l1", ("l1", "l2", "none"), (
            "train with L1 kernel regularization before pruning: it drives unneeded filters towards "
            "zero so pruning removes them with little AP loss",)),
        Advice("model.kernel_regularization_factor", 5e-4, (1e-5, 1e-3), (
            "large enough to push filters towards zero, small enough not to cost accuracy",)),
        Advice("export.data_type", "int8", ("fp32", "fp16", "int8"), (
            "expected AP change against the float model: FP32 none, FP16 none or minimal, "
            "INT8 within 2-3 AP points (the INT8 gate checks this)",)),
    ]


def recommend_all(stats, deploy_aspect_ratio=None, cal_batch_size=DEFAULT_CAL_BATCH_SIZE,
                  cal_batches=DEFAULT_CAL_BATCHES):
    """Every recommendation for a dataset, as a list of `Advice`."""
    return [recommend_resolution(stats, deploy_aspect_ratio),
            recommend_calibration(stats, cal_batch_size, cal_batches),
            *static_guidance()]
