"""Choose calibration images by content: persons per image and labelled keypoints per person.

INT8 thresholds are only as good as the activations they are measured on, so calibration images
should look like deployment images: people, enough of them visible. This reads a COCO
person-keypoints file, counts per image the non-crowd persons with at least `min_keypoints`
labelled keypoints, keeps images with at least `min_persons` such persons, and picks N of them
(in file-name order, or shuffled with a seed). The report says what was chosen, and when fewer
than N qualify, why the others did not.
"""

import os
import shutil
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError
from bpnet.fileio import read_json, write_json_atomic
from bpnet.image_files import count_images

REPORT_NAME = "calibration_images.json"


def count_people(coco, min_keypoints):
    """{image id: number of non-crowd persons with >= min_keypoints labelled keypoints}."""
    counts = {}
    for ann in coco.get("annotations", []):
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) < min_keypoints:
            continue
        counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
    return counts


def check_sampling_options(n, min_persons, min_keypoints):
    if n < 1:
        raise BpnetError(f"-n: {n} must be >= 1")
    if min_persons < 0:
        raise BpnetError(f"--min_persons: {min_persons} must be >= 0 (0 also allows images without people)")
    if not 0 <= min_keypoints <= 17:
        raise BpnetError(f"--min_keypoints: {min_keypoints} is not in 0..17 (COCO has 17 keypoints)")


def select_images(coco, images_dir, n, min_persons=1, min_keypoints=1, randomize=False, seed=0):
    """(chosen [(file name, persons)], reasons {why an image was left out: how many}, eligible count)."""
    images_dir = Path(images_dir)
    people = count_people(coco, min_keypoints)
    eligible, reasons = [], {}
    for image in sorted(coco.get("images", []), key=lambda im: im["file_name"]):
        persons = people.get(image["id"], 0)
        if persons < min_persons:
            why = f"fewer than {min_persons} person(s) with >= {min_keypoints} labelled keypoints"
        elif not (images_dir / image["file_name"]).is_file():
            why = f"image file missing from {images_dir}"
        else:
            eligible.append((image["file_name"], persons))
            continue
        reasons[why] = reasons.get(why, 0) + 1
    order = np.random.default_rng(seed).permutation(len(eligible)) if randomize else range(len(eligible))
    chosen = [eligible[i] for i in order][:n]
    return chosen, reasons, len(eligible)


def sample_calibration(annotations, images_dir, out_dir, n, min_persons=1, min_keypoints=1,
                       randomize=False, seed=0, link=False):
    """Copy (or symlink) the chosen images into `out_dir`; returns the report (also written to
    OUT_DIR/calibration_images.json)."""
    check_sampling_options(n, min_persons, min_keypoints)
    coco = read_json(annotations, "annotations file")
    if not isinstance(coco, dict) or "images" not in coco:
        raise BpnetError(f"annotations file {annotations} is not a COCO file (no 'images' list)")
    if not Path(images_dir).is_dir():
        raise BpnetError(f"-i/--images: {images_dir} is not a folder")
    out_dir = Path(out_dir)
    if out_dir.is_dir() and count_images(out_dir):
        raise BpnetError(f"-o/--output_dir: {out_dir} already holds images; choose a new or empty folder "
                         "so the calibration set is exactly what this command chose")
    chosen, reasons, eligible = select_images(coco, images_dir, n, min_persons, min_keypoints, randomize, seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, _ in chosen:
        source, target = Path(images_dir) / name, out_dir / name
        if link:
            os.symlink(source.resolve(), target)
        else:
            shutil.copy2(source, target)
    report = {
        "annotations": str(annotations), "images": str(images_dir), "output_dir": str(out_dir),
        "requested": n, "chosen": len(chosen), "eligible": eligible,
        "total_images": len(coco["images"]),
        "criteria": {"min_persons": min_persons, "min_keypoints": min_keypoints,
                     "order": f"random (seed {seed})" if randomize else "file name"},
        "left_out": reasons, "files": [{"file_name": f, "persons": p} for f, p in chosen],
        "shortfall": None if len(chosen) >= n else (
            f"only {eligible} of {len(coco['images'])} images meet the criteria; " +
            "; ".join(f"{count} left out: {why}" for why, count in reasons.items())),
    }
    write_json_atomic(out_dir / REPORT_NAME, report)
    return report
