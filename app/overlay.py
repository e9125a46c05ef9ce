"""Skeletons drawn on images, from COCO-format keypoint results (numpy + OpenCV; no TensorFlow).

The worker stores each evaluation's `results.json` (COCO results: image_id, keypoints as 51
numbers x, y, score, person score); the dashboard draws them on the dataset's own images so a
user sees what a model finds, and two models side by side on the same pictures.
"""

import json
from pathlib import Path

import cv2
import numpy as np

from bpnet.draw import draw_skeletons
from bpnet.errors import BpnetError
from bpnet.preprocess import read_image
from bpnet.skeleton import load_skeleton

LIMB_COLOR_BGR = (0, 200, 255)
JOINT_COLOR_BGR = (0, 0, 255)
MAX_DRAW_SIDE = 480   # pictures are thumbnails in the page; keep them light


def read_results(path):
    """COCO keypoint results -> {image_id: [(17, 3) keypoints, ...]} (person score ignored)."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise BpnetError(f"results file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BpnetError(f"results file {path} is not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise BpnetError(f"results file {path} must be a list of COCO keypoint results")
    people = {}
    for entry in entries:
        try:
            keypoints = np.asarray(entry["keypoints"], dtype=np.float32).reshape(-1, 3)
            people.setdefault(int(entry["image_id"]), []).append(keypoints)
        except (KeyError, TypeError, ValueError):
            continue  # a malformed entry is skipped; the evaluator reports those already
    return people


def draw_people(image_bgr, people, skeleton=None, min_score=0.0):
    """A copy of the image with every person's limbs and joints drawn; returns RGB for display.

    `people`: list of (K_coco, 3) arrays (x, y, v-or-score) in the image's pixels; a joint is drawn
    when its third value is above `min_score`.
    """
    skeleton = skeleton or load_skeleton()
    parts = []
    for keypoints in people:
        p = skeleton.coco_to_parts(np.asarray(keypoints, dtype=np.float32))
        p[:, 2] = p[:, 2] > min_score
        parts.append(p)
    thickness = max(1, round(max(image_bgr.shape[:2]) / 200))
    canvas = draw_skeletons(image_bgr, parts, skeleton, colors=[LIMB_COLOR_BGR] * len(skeleton.limbs),
                            joint_color=JOINT_COLOR_BGR, thickness=thickness)
    return cv2.cvtColor(_shrink(canvas), cv2.COLOR_BGR2RGB)


def _shrink(image):
    scale = MAX_DRAW_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    return cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                      interpolation=cv2.INTER_AREA)


def image_paths_by_id(annotations):
    """{image_id: file_name} of a COCO annotations file."""
    path = Path(annotations)
    try:
        data = json.loads(path.read_text())
        return {int(img["id"]): img["file_name"] for img in data["images"]}
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise BpnetError(f"annotations file {path} cannot be read for its image list ({err})") from None


def images_with_people(results_by_image, limit):
    """Image ids with the most detected people first (the most telling pictures), at most `limit`."""
    ranked = sorted(results_by_image, key=lambda i: (-len(results_by_image[i]), i))
    return ranked[:limit]


def overlay_image(images_dir, file_name, people):
    """Read one dataset image and draw `people` on it (RGB array), or raise a clear BpnetError."""
    return draw_people(read_image(Path(images_dir) / file_name), people)
