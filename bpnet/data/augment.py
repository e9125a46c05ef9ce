"""Placing a sample into the network input: one affine matrix moves image, mask and keypoints.

Training draws a random person-centric placement per sample: scale so the chosen person's height
is about `target_person_scale` of the input height (times a zoom drawn from
[zoom_ratio_min, zoom_ratio_max]), rotate by up to ±`rotate_deg_max` about that person, shift by up
to `translate_ratio_max` of the input size, and flip left/right with `flip_lr_prob`. Everything is
composed into a single 2x3 matrix (original pixels -> input pixels, pixel centres at integer
coordinates as cv2.warpAffine uses them), so the image, the loss mask and the keypoints cannot
drift apart. A flip also swaps the left/right part channels through `skeleton.flip_permutation`,
because a mirrored left wrist looks like a right wrist.

Without augmentation the sample is letterboxed exactly as inference does
(`bpnet.preprocess.letterbox_image`, pad mode), so validation sees what deployment sees.
Keypoints that land outside the input keep their label: their targets simply fall off the map.
"""

import cv2
import numpy as np

from bpnet.preprocess import PAD_VALUE, letterbox_image

# The person-centric scale is kept within these multiples of the whole-image fit scale, so a
# 10-pixel background person chosen as the main person is not blown up into a blur, and a
# close-up is not shrunk into a dot.
MIN_SCALE_OF_FIT = 0.5
MAX_SCALE_OF_FIT = 4.0
# Warping with bilinear sampling aliases when shrinking a lot; below this scale the image is first
# shrunk with area averaging.
PRESHRINK_BELOW = 0.5


def as_3x3(matrix):
    return np.vstack([matrix, [0.0, 0.0, 1.0]])


def translation(tx, ty):
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def scaling(s):
    return np.array([[s, 0.0, 0.0], [0.0, s, 0.0], [0.0, 0.0, 1.0]])


def rotation(deg):
    """Rotation by `deg` degrees (counter-clockwise on screen, where y points down)."""
    rad = np.deg2rad(deg)
    c, s = np.cos(rad), np.sin(rad)
    return np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])


def mirror_x(width):
    """x -> width - 1 - x: a horizontal flip of an image `width` pixels wide."""
    return np.array([[-1.0, 0.0, width - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def letterbox_matrix(image_hw, input_hw):
    """The letterbox (pad mode) placement as an affine matrix: x_in = (x + 0.5) * s - 0.5."""
    s = min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])
    return (translation(0.5 * s - 0.5, 0.5 * s - 0.5) @ scaling(s))[:2]


def person_scale(box_h, image_hw, input_hw, target_person_scale):
    """Scale that makes a person `box_h` pixels tall `target_person_scale` of the input height,
    clamped to [MIN, MAX] times the scale that fits the whole image."""
    fit = min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])
    if box_h <= 1:
        return fit
    return float(np.clip(target_person_scale * input_hw[0] / box_h, MIN_SCALE_OF_FIT * fit, MAX_SCALE_OF_FIT * fit))


def random_placement(rng, aug, image_hw, input_hw, boxes):
    """(2x3 matrix, flipped) for one random person-centric placement.

    `boxes` are COCO (x, y, w, h) boxes of the kept people; with none, the image centre is used."""
    if len(boxes):
        x, y, w, h = boxes[rng.integers(len(boxes))]
        centre, scale = (x + w / 2.0, y + h / 2.0), person_scale(h, image_hw, input_hw, aug.target_person_scale)
    else:
        centre = ((image_hw[1] - 1) / 2.0, (image_hw[0] - 1) / 2.0)
        scale = min(input_hw[0] / image_hw[0], input_hw[1] / image_hw[1])
    scale *= rng.uniform(aug.zoom_ratio_min, aug.zoom_ratio_max)
    angle = rng.uniform(-aug.rotate_deg_max, aug.rotate_deg_max)
    shift = rng.uniform(-aug.translate_ratio_max, aug.translate_ratio_max, size=2) * (input_hw[1], input_hw[0])
    flipped = bool(rng.random() < aug.flip_lr_prob)
    out_centre = ((input_hw[1] - 1) / 2.0 + shift[0], (input_hw[0] - 1) / 2.0 + shift[1])
    matrix = (translation(*out_centre) @ rotation(angle) @ scaling(scale)
              @ translation(-centre[0], -centre[1]))
    if flipped:
        matrix = mirror_x(input_hw[1]) @ matrix
    return matrix[:2], flipped


def transform_parts(parts, matrix, flip_permutation=None):
    """Move (N, P, 3) keypoints with a 2x3 matrix; swap left/right channels after a flip.

    Unlabelled rows (v = 0) stay (0, 0, 0) so they cannot be mistaken for a point."""
    parts = np.asarray(parts, np.float32)
    out = parts.copy()
    out[..., :2] = parts[..., :2] @ matrix[:, :2].T.astype(np.float32) + matrix[:, 2].astype(np.float32)
    out[parts[..., 2] <= 0] = 0.0
    if flip_permutation is not None:
        out = out[:, list(flip_permutation)]
    return out


def warp(image, matrix, input_hw, border_value, interpolation=cv2.INTER_LINEAR):
    """cv2.warpAffine into (H, W), shrinking with area averaging first when the scale is small."""
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    if scale < PRESHRINK_BELOW:
        h, w = image.shape[:2]
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
        fx, fy = new_w / w, new_h / h
        # cv2.resize maps x -> (x + 0.5) * fx - 0.5; undo that in the remaining warp.
        shrink = translation(0.5 * fx - 0.5, 0.5 * fy - 0.5) @ np.diag([fx, fy, 1.0])
        matrix = (as_3x3(matrix) @ np.linalg.inv(shrink))[:2]
    return cv2.warpAffine(image, matrix, (input_hw[1], input_hw[0]), flags=interpolation,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)


def place_sample(image, mask, parts, boxes, input_hw, aug=None, flip_permutation=None, rng=None):
    """(image uint8 (H, W, 3), mask float32 (H, W), parts (N, P, 3) in input pixels).

    `mask` None (nothing to ignore) stays None: an all-ones mask would only cost a warp.
    With `aug` (an AugmentationSpec with enabled=True) and `rng`, a random person-centric
    placement; otherwise the inference letterbox. The mask's border is 1: padding holds no person,
    so it is honest background."""
    image_hw = image.shape[:2]
    if aug is not None and aug.enabled and rng is not None:
        matrix, flipped = random_placement(rng, aug, image_hw, input_hw, boxes)
        placed = warp(image, matrix, input_hw, (PAD_VALUE,) * 3)
    else:
        matrix, flipped = letterbox_matrix(image_hw, input_hw), False
        placed, _ = letterbox_image(image, input_hw, "pad_image_input")
    placed_mask = None if mask is None else warp(mask, matrix, input_hw, 1.0)
    placed_parts = transform_parts(parts, matrix, flip_permutation if flipped else None)
    return placed, placed_mask, placed_parts
