"""COCO keypoint AP of a model, of any results file, or of the ground truth itself (the oracle).

AP is computed by pycocotools' COCOeval with iouType 'keypoints' and nothing else, so the numbers
are exactly COCO's. Three entry points share one scorer:
- `evaluate_model`: run a model (any backend) on the annotated images, decode, score.
- `evaluate_results`: score an existing COCO results file (any tool's predictions).
- `evaluate_oracle`: encode the ground truth with the training-target code at the inference
  resolution, decode it, score it: the best AP this decoder can reach at that resolution.
Each writes `results.json` (COCO results format) and `metrics.json` atomically into `out_dir`.
"""

import contextlib
import io
import time
from pathlib import Path

import numpy as np

from bpnet.data.coco import check_images_exist, check_keypoint_lengths, image_sample, person_category, read_coco
from bpnet.decode import decode, decode_options, person_to_coco
from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import read_json, write_json_atomic, write_text_atomic
from bpnet.preprocess import letterbox_image, read_image
from bpnet.skeleton import load_skeleton
from bpnet.specs import TargetSpec, spec_to_yaml

# pycocotools' COCOeval.stats order for keypoints.
STAT_NAMES = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
BUNDLED_ANNOTATIONS = (Path(__file__).resolve().parent.parent / "data" / "coco-mini" / "annotations"
                       / "person_keypoints_train2017.json")
BUNDLED_NOTE = ("scored on the bundled coco-mini sample: 80 COCO train2017 images (28 with annotated "
                "people), the images the bundled specs train on; these numbers show the workflow works, "
                "they are not a measure of accuracy on unseen images")
MAX_LISTED = 5


# ---------------------------------------------------------------- ground truth and results

def load_ground_truth(annotations, skeleton):
    """(COCO index, person category id) of a person-keypoints annotations file; clear errors."""
    annotations = Path(annotations)
    coco = read_coco(annotations)
    category_id = person_category(coco, annotations, skeleton)
    check_keypoint_lengths(coco, annotations, category_id, len(skeleton.coco_keypoints))
    return coco, category_id


def check_results(results, coco, category_id, source, num_keypoints=17):
    """Raise a BpnetError listing malformed entries of a COCO keypoint results list."""
    if not isinstance(results, list):
        raise BpnetError(f"results file {source}: expected a JSON list of detections "
                         f"{{image_id, category_id, keypoints, score}}, got {type(results).__name__}")
    known_ids = set(coco.getImgIds())
    problems = []
    for index, entry in enumerate(results):
        problem = _entry_problem(entry, known_ids, category_id, num_keypoints)
        if problem:
            problems.append(f"entry {index}: {problem}")
    if problems:
        raise BpnetError(f"results file {source}: {len(problems)} malformed detection(s): "
                         f"{'; '.join(problems[:MAX_LISTED])}{' ...' if len(problems) > MAX_LISTED else ''}")


def _entry_problem(entry, known_ids, category_id, num_keypoints):
    if not isinstance(entry, dict):
        return f"expected an object, got {type(entry).__name__}"
    missing = [k for k in ("image_id", "category_id", "keypoints", "score") if k not in entry]
    if missing:
        return f"missing keys {missing}"
    if not isinstance(entry["image_id"], int) or entry["image_id"] not in known_ids:
        return f"image_id {entry['image_id']!r} is not an image of the annotations file"
    if entry["category_id"] != category_id:
        return f"category_id {entry['category_id']!r} is not the person category ({category_id})"
    keypoints = entry["keypoints"]
    if not isinstance(keypoints, list) or len(keypoints) != 3 * num_keypoints \
            or not all(_is_number(v) for v in keypoints):
        size = len(keypoints) if isinstance(keypoints, list) else type(keypoints).__name__
        return f"keypoints must be a list of {3 * num_keypoints} numbers (x, y, v), got {size}"
    if not _is_number(entry["score"]):
        return f"score must be a number, got {entry['score']!r}"
    return None


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def results_index(coco, results, category_id):
    """A COCO index of `results` (pycocotools' loadRes, which also handles an empty list)."""
    if results:
        with contextlib.redirect_stdout(io.StringIO()):
            return coco.loadRes([dict(r) for r in results])
    from pycocotools.coco import COCO

    # loadRes cannot take an empty list; no detections is a valid result (AP 0).
    empty = COCO()
    empty.dataset = {"images": list(coco.dataset["images"]), "annotations": [],
                     "categories": list(coco.dataset["categories"])}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty


def check_scoreable(coco, category_id, image_ids, annotations):
    """AP is defined only over images with at least one labelled person: COCOeval would report
    -1.0 for none, which is no score. Raise a BpnetError before any inference runs."""
    if not image_ids:
        raise BpnetError(f"COCO annotations file {annotations}: no images to evaluate "
                         "(its 'images' list is empty)")
    wanted = set(int(i) for i in image_ids)
    people = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=sorted(wanted), catIds=[category_id]))
              if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) > 0]
    if not people:
        raise BpnetError(f"COCO annotations file {annotations}: none of the {len(wanted)} evaluated "
                         "images has a person with labelled keypoints, so AP is undefined (COCOeval "
                         "would report -1); evaluate on images with annotated people")


def score_results(coco, results, category_id, image_ids):
    """pycocotools COCOeval('keypoints') over `image_ids` -> (stats dict, printed summary table)."""
    from pycocotools.cocoeval import COCOeval

    detections = results_index(coco, results, category_id)
    evaluator = COCOeval(coco, detections, "keypoints")
    evaluator.params.imgIds = sorted(int(i) for i in image_ids)
    evaluator.params.catIds = [category_id]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
    table = io.StringIO()
    with contextlib.redirect_stdout(table):
        evaluator.summarize()
    stats = {name: round(float(v), 6) for name, v in zip(STAT_NAMES, evaluator.stats)}
    return stats, table.getvalue()


def write_outputs(out_dir, results, metrics, table, spec=None):
    out_dir = Path(out_dir)
    write_json_atomic(out_dir / "results.json", results)
    write_json_atomic(out_dir / "metrics.json", metrics)
    write_text_atomic(out_dir / "coco_table.txt", table)
    if spec is not None:
        write_text_atomic(out_dir / "spec.yaml", spec_to_yaml(spec))


def base_metrics(stats, mode, annotations, image_ids, table):
    metrics = {**stats, "mode": mode, "annotations": str(annotations),
               "num_images": len(image_ids), "image_ids": sorted(int(i) for i in image_ids)}
    if Path(annotations).resolve() == BUNDLED_ANNOTATIONS:
        metrics["note"] = BUNDLED_NOTE
    metrics["table"] = table.rstrip("\n").splitlines()
    return metrics


# ---------------------------------------------------------------- the three modes

def evaluate_results(results_json, annotations, out_dir, skeleton_name="bpnet_18joints"):
    """Score an existing COCO keypoint results file over every image of the annotations."""
    skeleton = load_skeleton(skeleton_name)
    coco, category_id = load_ground_truth(annotations, skeleton)
    results = read_json(results_json, "results file")
    check_results(results, coco, category_id, results_json, len(skeleton.coco_keypoints))
    image_ids = coco.getImgIds()
    check_scoreable(coco, category_id, image_ids, annotations)
    stats, table = score_results(coco, results, category_id, image_ids)
    metrics = base_metrics(stats, "results", annotations, image_ids, table)
    metrics["results_file"] = str(results_json)
    write_outputs(out_dir, results, metrics, table)
    return metrics


def annotated_samples(coco, category_id, images_dir, skeleton, max_images=None):
    """Samples (bpnet.data.coco) of the annotation file's images, in id order, files checked."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise BpnetError(f"image folder not found: {images_dir}")
    ids = sorted(coco.getImgIds())[:max_images]
    samples = [image_sample(coco, i, images_dir, category_id, skeleton, min_keypoints=1) for i in ids]
    check_images_exist(samples, images_dir)
    return samples


def evaluate_oracle(annotations, images_dir, infer_spec, out_dir, target_spec=None, max_images=None,
                    progress=None):
    """Decoder ceiling: ground truth -> training targets at the spec's resolution -> decode -> AP."""
    from bpnet.targets import make_targets

    target_spec = target_spec or TargetSpec()
    skeleton = load_skeleton(infer_spec.skeleton)
    coco, category_id = load_ground_truth(annotations, skeleton)
    samples = annotated_samples(coco, category_id, images_dir, skeleton, max_images)
    check_scoreable(coco, category_id, [s.image_id for s in samples], annotations)
    results, decode_s = [], 0.0
    for n, sample in enumerate(samples, 1):
        _, box = letterbox_image(read_image(sample.image_path), infer_spec.input_shape,
                                 infer_spec.keep_aspect_ratio_mode)
        parts = sample.parts.copy()
        parts[..., :2] = box.to_input(parts[..., :2])
        heatmaps, pafs = make_targets(parts, skeleton, box.input_hw, target_spec)
        start = time.perf_counter()
        people = decode(heatmaps, pafs, skeleton, **decode_options(infer_spec))
        decode_s += time.perf_counter() - start
        results.extend(person_to_coco(p, box, skeleton, sample.image_id) for p in people)
        emit(progress, "evaluate", "step", step=n, num_steps=len(samples), fraction=n / len(samples))
    image_ids = [s.image_id for s in samples]
    stats, table = score_results(coco, results, category_id, image_ids)
    metrics = base_metrics(stats, "oracle", annotations, image_ids, table)
    metrics["timing"] = {"decode_ms_per_image": round(1000 * decode_s / max(len(samples), 1), 3)}
    metrics["targets"] = target_spec.model_dump(mode="json")
    metrics["input_shape"] = list(infer_spec.input_shape)
    write_outputs(out_dir, results, metrics, table, infer_spec)
    return metrics


def evaluate_model(model_path, annotations, images_dir, infer_spec, out_dir, max_images=None,
                   progress=None):
    """Run a model (.hdf5/.onnx/.engine) on the annotated images, decode and score."""
    from bpnet.backends import load_backend
    from bpnet.infer import ImageItem, infer_images

    skeleton = load_skeleton(infer_spec.skeleton)
    coco, category_id = load_ground_truth(annotations, skeleton)
    samples = annotated_samples(coco, category_id, images_dir, skeleton, max_images)
    check_scoreable(coco, category_id, [s.image_id for s in samples], annotations)
    items = [ImageItem(s.image_id, s.image_path) for s in samples]
    emit(progress, "evaluate", "start", num_steps=len(items), message=f"{len(items)} images")
    with load_backend(model_path, stage=infer_spec.output_stage_to_use) as backend:
        _, results, timing = infer_images(backend, items, infer_spec, skeleton, progress, stage="evaluate")
        backend_info = backend.describe()
    image_ids = [item.image_id for item in items]
    stats, table = score_results(coco, results, category_id, image_ids)
    metrics = base_metrics(stats, "model", annotations, image_ids, table)
    metrics.update(model=str(model_path), timing=timing, input_shape=list(infer_spec.input_shape),
                   **backend_info)
    write_outputs(out_dir, results, metrics, table, infer_spec)
    emit(progress, "evaluate", "end", message=f"AP {stats['AP']:.3f}")
    return metrics


def evaluate_once(model_path, annotations, images_dir, infer_spec, out_dir, max_images=None, progress=None):
    """`evaluate_model`, unless `out_dir` already holds an evaluation of this same model file (its
    metrics.json names it and results.json is beside it: written by an earlier attempt, or copied
    from the evaluate stage that measured it); the metrics either way. The one "evaluate once"
    cache of the search trials and the gate."""
    out_dir = Path(out_dir)
    metrics_path = out_dir / "metrics.json"
    if metrics_path.is_file() and (out_dir / "results.json").is_file():
        cached = read_json(metrics_path, "cached metrics")
        if cached.get("model") == str(model_path):
            return cached
    return evaluate_model(model_path, annotations, images_dir, infer_spec, out_dir, max_images=max_images,
                          progress=progress)
