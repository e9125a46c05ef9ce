"""Checks run at every import, on real images: parity with the source runtime and a response check.

Parity: the rebuilt model's last-stage maps against the source runtime's (TFLite interpreter, TF
graph, ONNX Runtime) after the card's channel map, on the same preprocessed images; the largest
absolute difference must be <= PARITY_TOLERANCE.

Response: parity alone cannot tell a wrong card normalisation (both sides get the same wrong
input). The source network, fed the images prepared as the card says, must light up its
heatmaps at the annotated keypoints: the mean heatmap value there, over the labelled keypoints
of the images, must reach MIN_KEYPOINT_RESPONSE. A card with the wrong normalisation or colour
order, or a heatmap map that names the wrong channels, fails this with a clear message.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.preprocess import prepare_batch, read_image

PARITY_TOLERANCE = 1e-4
MIN_KEYPOINT_RESPONSE = 0.1     # measured: 0.2-0.3 with the right card, < 0.05 with a wrong one
NUM_PARITY_IMAGES = 2
NUM_RESPONSE_IMAGES = 8
BUNDLED_COCO = Path(__file__).resolve().parents[2] / "data" / "coco-mini"


@dataclass(frozen=True)
class CheckImages:
    images: list        # BGR uint8 images
    parts: list         # per image: (P, num_parts, 3) annotated parts in image pixels
    source: str         # what they are, for the report


def bundled_check_images(skeleton, coco_dir=BUNDLED_COCO, count=NUM_RESPONSE_IMAGES):
    """The bundled COCO images with the most labelled keypoints (the first `count`)."""
    from bpnet.evaluate import annotated_samples, load_ground_truth

    annotations = Path(coco_dir) / "annotations" / "person_keypoints_train2017.json"
    if not annotations.is_file():
        raise BpnetError(f"the import checks need annotated images; {annotations} is missing "
                         "(run from a source checkout, which bundles data/coco-mini)")
    coco, category_id = load_ground_truth(annotations, skeleton)
    samples = annotated_samples(coco, category_id, Path(coco_dir) / "train2017", skeleton)
    samples.sort(key=lambda s: (-int((s.parts[..., 2] > 0).sum()), s.image_id))
    chosen = samples[:count]
    return CheckImages([read_image(s.image_path) for s in chosen], [s.parts for s in chosen],
                       f"{len(chosen)} bundled COCO train2017 images (ids {[s.image_id for s in chosen]})")


def prepare(images, input_hw, normalization):
    """Images as our pipeline prepares them (BGR, letterboxed) with the card's normalisation."""
    return prepare_batch(images, input_hw, "pad_image_input",
                         normalization.image_scale, normalization.image_offset)


def max_abs_difference(ours, theirs):
    return max(float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))
               for a, b in zip(ours, theirs))


def check_parity(ours, theirs, what):
    """`ours`, `theirs`: (heatmaps, pafs) pairs. Returns the max difference or raises."""
    diff = max_abs_difference(ours, theirs)
    if not np.isfinite(diff) or diff > PARITY_TOLERANCE:
        raise BpnetError(f"import parity failed: the rebuilt model differs from {what} by {diff:.3g} "
                         f"(max abs; allowed {PARITY_TOLERANCE:g}); nothing was written")
    return diff


def keypoint_response(heatmaps, letterboxes, parts_per_image, stride):
    """Mean heatmap value at the labelled keypoints (their own part's channel)."""
    values = []
    for heat, box, parts in zip(heatmaps, letterboxes, parts_per_image):
        h, w = heat.shape[:2]
        for person in parts:
            for c, (x, y, v) in enumerate(person):
                if v <= 0:
                    continue
                ix, iy = box.to_input([x, y])
                col, row = int(round((ix + 0.5) / stride - 0.5)), int(round((iy + 0.5) / stride - 0.5))
                if 0 <= row < h and 0 <= col < w:
                    values.append(float(heat[row, col, c]))
    return float(np.mean(values)) if values else 0.0


def check_response(response, card_source):
    if response < MIN_KEYPOINT_RESPONSE:
        raise BpnetError(
            f"import check failed: fed the bundled images prepared as {card_source} says (input."
            f"colour_order, input.normalization), the network's heatmaps at annotated keypoints "
            f"average {response:.3f} (need >= {MIN_KEYPOINT_RESPONSE}): the card's normalisation or "
            "colour order (or its heatmap part order) does not match this network; nothing was written")
    return response
