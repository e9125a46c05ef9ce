"""Skeletons drawn on images, from COCO-format keypoint results (numpy + OpenCV; no TensorFlow).

The worker stores each evaluation's `results.json` (COCO results: image_id, keypoints as 51
numbers x, y, score, person score); the dashboard draws them on the dataset's own images next to
the ground truth (two colours, OKS per person) so a user sees what a model finds and misses, and
two models side by side on the same pictures. Images are chosen by their annotated people (not
by what a model detects: an untrained model "finds" people on zebras), and separately the images
where the result does worst (lowest mean OKS).
"""

import json
from pathlib import Path

import cv2
import numpy as np

from bpnet.data.coco import read_coco_json
from bpnet.draw import draw_skeletons
from bpnet.errors import BpnetError
from bpnet.guide.gate import match_people, oks, people_by_image
from bpnet.preprocess import read_image
from bpnet.skeleton import load_skeleton

GT_COLOR_BGR = (60, 200, 60)          # ground truth: green
PRED_COLOR_BGR = (255, 80, 200)       # prediction: magenta (distinct from green for most colour vision)
LOST_COLOR_BGR = (0, 0, 255)          # a labelled keypoint the prediction lost: red ring
MAX_DRAW_SIDE = 480   # pictures are thumbnails in the page; keep them light


def _shrink(image):
    scale = MAX_DRAW_SIDE / max(image.shape[:2])
    if scale >= 1:
        return image
    return cv2.resize(image, (round(image.shape[1] * scale), round(image.shape[0] * scale)),
                      interpolation=cv2.INTER_AREA)


def image_paths_by_id(annotations):
    """{image_id: file_name} of a COCO annotations file."""
    return {int(img["id"]): img["file_name"] for img in _read_annotations(annotations, "image list")["images"]}


def _read_annotations(annotations, what):
    try:
        return read_coco_json(annotations)
    except BpnetError as err:
        raise BpnetError(f"annotations file {annotations} cannot be read for its {what} ({err})") from None


def read_detections(path):
    """COCO keypoint results -> {image_id: [{"keypoints": [51 numbers], "score": s}]}."""
    path = Path(path)
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        raise BpnetError(f"results file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BpnetError(f"results file {path} is not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise BpnetError(f"results file {path} must be a list of COCO keypoint results")
    out = {}
    for entry in entries:
        try:
            keypoints = [float(v) for v in entry["keypoints"]]
            if len(keypoints) % 3:
                continue
            out.setdefault(int(entry["image_id"]), []).append(
                {"keypoints": keypoints, "score": float(entry.get("score", 0.0))})
        except (KeyError, TypeError, ValueError):
            continue
    return out


def read_ground_truth(annotations):
    """{image_id: [{"xyv": (17, 3), "area": a}]} of the labelled, non-crowd people of a COCO file
    (the form `bpnet.guide.gate.match_people` takes)."""
    coco = _read_annotations(annotations, "people")
    try:
        return {int(image_id): people for image_id, people in people_by_image(coco).items()}
    except (KeyError, TypeError, ValueError) as err:
        raise BpnetError(f"annotations file {annotations} cannot be read for its people ({err})") from None


def person_oks(gt_people, detections):
    """OKS of each ground-truth person with the detection matched to it (0 when missed), and
    the matched detection's index (None when missed)."""
    pairs = dict(match_people(gt_people, detections))
    scores, matched = [], []
    for g, gt in enumerate(gt_people):
        d = pairs.get(g)
        if d is None:
            scores.append(0.0)
            matched.append(None)
        else:
            det_xy = np.asarray(detections[d]["keypoints"], dtype=np.float64).reshape(-1, 3)[:, :2]
            scores.append(oks(gt["xyv"], det_xy, gt["area"]))
            matched.append(d)
    return scores, matched


def images_with_annotated_people(ground_truth, limit):
    """Image ids with the most annotated people first (ties: lowest id), at most `limit`."""
    return sorted(ground_truth, key=lambda i: (-len(ground_truth[i]), i))[:limit]


def worst_images(ground_truth, detections, limit):
    """[(image_id, mean OKS)] of the images with annotated people where the result does worst."""
    scored = []
    for image_id, gt_people in ground_truth.items():
        scores, _ = person_oks(gt_people, detections.get(image_id, []))
        scored.append((float(np.mean(scores)), image_id))
    scored.sort()
    return [(image_id, mean) for mean, image_id in scored[:limit]]


def lost_keypoints(gt_xyv, det_keypoints, min_score):
    """Mask of the labelled keypoints the prediction does not have above `min_score`."""
    labelled = gt_xyv[:, 2] > 0
    if det_keypoints is None:
        return labelled
    scores = np.asarray(det_keypoints, dtype=np.float64).reshape(-1, 3)[:, 2]
    return labelled & (scores <= min_score)


def draw_truth_and_prediction(image_bgr, gt_people, detections, min_score=0.0, skeleton=None):
    """RGB picture: ground truth in green, prediction in magenta, lost keypoints ringed red and
    the OKS of each ground-truth person written at its top; returns (picture, OKS per person)."""
    skeleton = skeleton or load_skeleton()
    scores, matched = person_oks(gt_people, detections)
    thickness = max(1, round(max(image_bgr.shape[:2]) / 250))
    canvas = image_bgr.copy()

    def parts_of(xy_v, floor):
        p = skeleton.coco_to_parts(np.asarray(xy_v, dtype=np.float32).reshape(-1, 3))
        p[:, 2] = p[:, 2] > floor
        return p

    canvas = draw_skeletons(canvas, [parts_of(gt["xyv"], 0) for gt in gt_people], skeleton,
                            colors=[GT_COLOR_BGR] * len(skeleton.limbs), joint_color=GT_COLOR_BGR,
                            thickness=thickness)
    canvas = draw_skeletons(canvas, [parts_of(d["keypoints"], min_score) for d in detections], skeleton,
                            colors=[PRED_COLOR_BGR] * len(skeleton.limbs), joint_color=PRED_COLOR_BGR,
                            thickness=thickness)
    font = max(0.4, max(image_bgr.shape[:2]) / 900)
    for gt, score, d in zip(gt_people, scores, matched):
        if d is not None:   # a missed person says "missed"; rings mark what a found one lost
            for x, y, _ in gt["xyv"][lost_keypoints(gt["xyv"], detections[d]["keypoints"], min_score)]:
                cv2.circle(canvas, (int(x), int(y)), 3 * thickness + 2, LOST_COLOR_BGR, max(1, thickness // 2),
                           cv2.LINE_AA)
        labelled = gt["xyv"][gt["xyv"][:, 2] > 0]
        x, y = int(labelled[:, 0].min()), int(max(12, labelled[:, 1].min() - 6))
        text = f"OKS {score:.2f}" if d is not None else "missed"
        cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font, (0, 0, 0), 3 * thickness, cv2.LINE_AA)
        cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, font, (255, 255, 255), thickness, cv2.LINE_AA)
    return cv2.cvtColor(_shrink(canvas), cv2.COLOR_BGR2RGB), scores


def truth_and_prediction_image(images_dir, file_name, gt_people, detections, min_score=0.0):
    """Read one dataset image and draw ground truth against prediction on it (see above)."""
    return draw_truth_and_prediction(read_image(Path(images_dir) / file_name), gt_people, detections, min_score)


# ------------------------------------------------------------------ heatmap and PAF overlays

def read_sample_maps(path):
    """The evaluate stage's sample_maps.npz -> [{image_id, file_name, heatmaps, pafs, scale,
    image_hw, input_hw}] (maps (h, w, C) on the network's output grid)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return [{"image_id": int(data["image_ids"][k]), "file_name": str(data["file_names"][k]),
                     "heatmaps": data[f"heatmaps_{k}"], "pafs": data[f"pafs_{k}"],
                     "scale": float(data["scales"][k]), "image_hw": tuple(int(v) for v in data["image_hw"][k]),
                     "input_hw": tuple(int(v) for v in data["input_hw"][k])}
                    for k in range(len(data["image_ids"]))]
    except (OSError, KeyError, ValueError) as err:
        raise BpnetError(f"sample maps {path} cannot be read ({err})") from None


def map_on_image(grid_map, scale, image_hw, input_hw):
    """One (h, w) output-grid map -> the original image's pixels (undo the letterbox: the image
    fills the input's top-left round(h*scale) x round(w*scale), the rest is padding)."""
    H, W = input_hw
    h, w = image_hw
    full = cv2.resize(np.asarray(grid_map, np.float32), (W, H), interpolation=cv2.INTER_LINEAR)
    crop = full[:max(1, min(H, round(h * scale))), :max(1, min(W, round(w * scale)))]
    return cv2.resize(crop, (w, h), interpolation=cv2.INTER_LINEAR)


def paf_magnitude(pafs, limb):
    """|PAF| of one limb: the length of its (x, y) field, channels 2*limb and 2*limb+1."""
    pafs = np.asarray(pafs, np.float32)
    return np.hypot(pafs[..., 2 * limb], pafs[..., 2 * limb + 1])


def lost_parts(on_image, points, floor):
    """Per ground-truth point (x, y): True when the map at that pixel is below `floor`."""
    h, w = on_image.shape[:2]
    lost = []
    for x, y in points:
        xi, yi = min(w - 1, max(0, int(round(x)))), min(h - 1, max(0, int(round(y))))
        lost.append(bool(on_image[yi, xi] < floor))
    return lost


def draw_map(image_bgr, on_image, points=(), lost=(), alpha=0.55):
    """RGB picture of a map blended on the image (colour = map value, clipped to 0..1), ground
    truth points ringed green when the map has them and red when it lost them."""
    heat = cv2.applyColorMap((np.clip(on_image, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    canvas = cv2.addWeighted(image_bgr, 1 - alpha, heat, alpha, 0)
    radius = max(4, round(max(image_bgr.shape[:2]) / 80))
    for (x, y), is_lost in zip(points, lost):
        color = LOST_COLOR_BGR if is_lost else GT_COLOR_BGR
        cv2.circle(canvas, (int(x), int(y)), radius, color, max(2, radius // 3), cv2.LINE_AA)
    return cv2.cvtColor(_shrink(canvas), cv2.COLOR_BGR2RGB)


def map_picture(images_dir, sample, gt_people, channel, kind, floor, skeleton=None):
    """(RGB picture, number of lost GT points) of one sample image: the heatmap of part
    `channel` (kind "part") or the PAF magnitude of limb `channel` (kind "limb"), with the
    ground truth of that part (or both ends of that limb) ringed: red where the map is below
    `floor` at the labelled point (the model lost it)."""
    skeleton = skeleton or load_skeleton()
    image = read_image(Path(images_dir) / sample["file_name"])
    if kind == "part":
        grid = np.asarray(sample["heatmaps"][..., channel], np.float32)
        wanted = [channel]
    else:
        grid = paf_magnitude(sample["pafs"], channel)
        wanted = list(skeleton.limbs[channel])
    on_image = map_on_image(grid, sample["scale"], sample["image_hw"], sample["input_hw"])
    points = []
    for person in gt_people:
        parts = skeleton.coco_to_parts(np.asarray(person["xyv"], np.float32))
        points += [(float(parts[p, 0]), float(parts[p, 1])) for p in wanted if parts[p, 2] > 0]
    lost = lost_parts(on_image, points, floor)
    return draw_map(image, on_image, points, lost), sum(lost)
