"""Choose calibration images by content: people per image, person size and visible keypoints.

INT8 thresholds are only as good as the activations they are measured on, so calibration images
should look like the images the model will be scored on: people, of the sizes and visibility the
evaluation data holds. This reads a COCO person-keypoints file and describes each image by its
people (non-crowd persons with at least `min_keypoints` labelled and `min_visible` visible
keypoints), their COCO size class (small < 32^2 px area <= medium < 96^2 <= large) and their
visible keypoints. Images pass the criteria (people per image, allowed size classes) and N of
them are picked: in file-name order, shuffled with a seed, or stratified - each stratum (people
per image x the image's dominant size class) gets its share of the evaluation data's images,
at least one when N allows, so the calibration set covers the evaluation mix. The report says
what was chosen, why the others were left out, and compares the calibration set's mix with the
evaluation set's (with warnings when the calibration set lacks a size class or people).
"""

import os
import shutil
from pathlib import Path

import numpy as np

from bpnet.data.coco import read_coco_json
from bpnet.errors import BpnetError
from bpnet.fileio import write_json_atomic
from bpnet.image_files import count_images

REPORT_NAME = "calibration_images.json"
SIZE_CLASSES = ("small", "medium", "large")
SMALL_MAX_AREA, MEDIUM_MAX_AREA = 32 ** 2, 96 ** 2          # COCO's size ranges (pixel area)
PEOPLE_BUCKETS = ("1", "2-3", "4+")          # people per image, over images with people
VISIBLE_BUCKETS = ("1-5", "6-11", "12-17")                  # visible (v = 2) keypoints per person
ORDERS = ("name", "random", "stratified")


def size_class(area):
    if area < SMALL_MAX_AREA:
        return "small"
    return "medium" if area < MEDIUM_MAX_AREA else "large"


def people_bucket(count):
    return "0" if count == 0 else "1" if count == 1 else "2-3" if count <= 3 else "4+"


def visible_bucket(count):
    return "1-5" if count <= 5 else "6-11" if count <= 11 else "12-17"


def visible_keypoints(ann):
    return int(np.sum(np.asarray(ann.get("keypoints") or [0, 0, 0]).reshape(-1, 3)[:, 2] == 2))


def image_profiles(coco, min_keypoints=1, min_visible=0):
    """{image id: {"sizes": [size class per counted person], "visible": [visible keypoints]}} for
    every image of the file; a person counts when non-crowd with enough labelled/visible keypoints."""
    profiles = {img["id"]: {"sizes": [], "visible": []} for img in coco.get("images", [])}
    for ann in coco.get("annotations", []):
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 0) < min_keypoints or ann["image_id"] not in profiles:
            continue
        visible = visible_keypoints(ann)
        if visible < min_visible:
            continue
        profiles[ann["image_id"]]["sizes"].append(size_class(float(ann.get("area", 0.0))))
        profiles[ann["image_id"]]["visible"].append(visible)
    return profiles


def dominant_size(sizes):
    """The size class most people of an image have (ties: the larger), None without people."""
    if not sizes:
        return None
    return max(SIZE_CLASSES, key=lambda c: (sizes.count(c), SIZE_CLASSES.index(c)))


def stratum(profile):
    return people_bucket(len(profile["sizes"])), dominant_size(profile["sizes"])


def data_mix(profiles, image_ids):
    """Shares of images with people per people bucket, of persons per size class and per
    visible-keypoint bucket, over `image_ids` (fractions; counts alongside)."""
    image_ids = list(image_ids)
    people = [len(profiles[i]["sizes"]) for i in image_ids]
    with_people = [people_bucket(n) for n in people if n > 0]
    sizes = [s for i in image_ids for s in profiles[i]["sizes"]]
    visible = [visible_bucket(v) for i in image_ids for v in profiles[i]["visible"]]

    def shares(values, keys):
        return {k: (values.count(k) / len(values) if values else 0.0) for k in keys}

    return {"images": len(image_ids), "persons": len(sizes),
            "images_without_people": sum(1 for n in people if n == 0),
            "people_per_image": shares(with_people, PEOPLE_BUCKETS),
            "person_size": shares(sizes, SIZE_CLASSES),
            "person_size_counts": {k: sizes.count(k) for k in SIZE_CLASSES},
            "visible_keypoints": shares(visible, VISIBLE_BUCKETS)}


def mix_warnings(calibration_mix, evaluation_mix):
    """What the calibration set lacks that the evaluation set has."""
    warnings = []
    if calibration_mix["persons"] == 0:
        warnings.append("the calibration set holds no people: INT8 ranges measured on it do not cover "
                        "the activations people cause")
    missing = [c for c in SIZE_CLASSES
               if evaluation_mix["person_size_counts"][c] > 0 and calibration_mix["person_size_counts"][c] == 0]
    if missing and calibration_mix["persons"]:
        warnings.append(f"the calibration set has no {' or '.join(missing)} people, the evaluation set has "
                        + ", ".join(f"{evaluation_mix['person_size_counts'][c]} {c}" for c in missing))
    return warnings


def allocate(available, target_counts, n):
    """How many images to take per stratum: shares of `target_counts` (the evaluation data's
    images per stratum) over the strata `available` holds, largest remainder, at least one per
    target stratum when n allows, never more than a stratum has; leftovers by availability."""
    wanted = {s: target_counts.get(s, 0) for s in available if target_counts.get(s, 0) > 0}
    if not wanted:                       # the evaluation data shares no stratum: follow the pool
        wanted = {s: available[s] for s in available}
    total = sum(wanted.values())
    exact = {s: n * c / total for s, c in wanted.items()}
    quota = {s: int(np.floor(v)) for s, v in exact.items()}
    for s in sorted(exact, key=lambda s: (-(exact[s] - quota[s]), s))[:n - sum(quota.values())]:
        quota[s] += 1
    for s in sorted(wanted, key=lambda s: (-wanted[s], s)):          # at least one of each
        if quota[s] == 0:
            donor = max(quota, key=lambda d: (quota[d], d))
            if quota[donor] > 1:
                quota[donor] -= 1
                quota[s] = 1
    quota = {s: min(q, available[s]) for s, q in quota.items()}
    spare = n - sum(quota.values())
    for s in sorted(available, key=lambda s: (-wanted.get(s, 0), -available[s], s)):
        extra = min(spare, available[s] - quota.get(s, 0))
        if extra > 0:
            quota[s] = quota.get(s, 0) + extra
            spare -= extra
    return quota


def stratified_choice(eligible, profiles, target_profiles, n, seed=0):
    """`n` image ids of `eligible` (profiles in `profiles`) following the strata mix of the
    images in `target_profiles` (the evaluation data; see `allocate`);
    within a stratum in file-name order (eligible's order) or shuffled when seed is not None."""
    by_stratum = {}
    for image_id in eligible:
        by_stratum.setdefault(stratum(profiles[image_id]), []).append(image_id)
    target = {}
    for profile in target_profiles.values():
        if profile["sizes"]:
            target[stratum(profile)] = target.get(stratum(profile), 0) + 1
    quota = allocate({s: len(ids) for s, ids in by_stratum.items()}, target, n)
    rng = np.random.default_rng(seed) if seed is not None else None
    chosen = []
    for key in sorted(quota, key=str):
        ids = by_stratum[key]
        order = rng.permutation(len(ids)) if rng is not None else range(len(ids))
        chosen += [ids[i] for i in order][:quota[key]]
    return cover_size_classes(chosen, eligible, profiles, target_profiles)


def cover_size_classes(chosen, eligible, profiles, target_profiles):
    """Swap images in so every size class the target has (and the pool offers) is present: a
    class can hide behind images whose dominant class is another."""
    chosen = list(chosen)
    for size in SIZE_CLASSES:
        if not any(size in p["sizes"] for p in target_profiles.values()):
            continue
        if any(size in profiles[i]["sizes"] for i in chosen):
            continue
        candidate = next((i for i in eligible if i not in chosen and size in profiles[i]["sizes"]), None)
        if candidate is None or not chosen:
            continue
        counts = {}
        for i in chosen:
            counts[stratum(profiles[i])] = counts.get(stratum(profiles[i]), 0) + 1
        # replace the last image of the most represented stratum
        biggest = max(counts, key=lambda k: (counts[k], str(k)))
        victim = max(k for k, i in enumerate(chosen) if stratum(profiles[i]) == biggest)
        chosen[victim] = candidate
    return chosen


def check_sampling_options(n, min_persons, min_keypoints, max_persons=None, min_visible=0, sizes=SIZE_CLASSES,
                           order="name"):
    if n < 1:
        raise BpnetError(f"-n: {n} must be >= 1")
    if min_persons < 0:
        raise BpnetError(f"--min_persons: {min_persons} must be >= 0 (0 also allows images without people)")
    if max_persons is not None and max_persons < max(min_persons, 1):
        raise BpnetError(f"--max_persons: {max_persons} must be >= --min_persons ({min_persons}) and >= 1")
    if not 0 <= min_keypoints <= 17:
        raise BpnetError(f"--min_keypoints: {min_keypoints} is not in 0..17 (COCO has 17 keypoints)")
    if not 0 <= min_visible <= 17:
        raise BpnetError(f"--min_visible: {min_visible} is not in 0..17 (COCO has 17 keypoints)")
    unknown = [s for s in sizes if s not in SIZE_CLASSES]
    if unknown or not sizes:
        raise BpnetError(f"--sizes: {','.join(sizes) or '(empty)'} - allowed: a comma list of "
                         f"{', '.join(SIZE_CLASSES)}")
    if order not in ORDERS:
        raise BpnetError(f"--order: {order!r} is not one of {', '.join(ORDERS)}")


def select_images(coco, images_dir, n, min_persons=1, min_keypoints=1, randomize=False, seed=0, *,
                  max_persons=None, min_visible=0, sizes=SIZE_CLASSES, stratify=False, target_coco=None):
    """(chosen [(file name, persons)], reasons {why an image was left out: how many}, eligible count).

    `stratify`: follow the mix of `target_coco` (default `coco`: the same file)."""
    images_dir = Path(images_dir)
    profiles = image_profiles(coco, min_keypoints, min_visible)
    eligible, reasons = [], {}
    images = {im["id"]: im for im in coco.get("images", [])}
    for image in sorted(images.values(), key=lambda im: im["file_name"]):
        why = reason_left_out(image, profiles[image["id"]], images_dir, min_persons, min_keypoints,
                              max_persons, min_visible, sizes)
        if why is None:
            eligible.append(image["id"])
        else:
            reasons[why] = reasons.get(why, 0) + 1
    if stratify:
        target_profiles = profiles if target_coco is None else image_profiles(target_coco, min_keypoints,
                                                                             min_visible)
        chosen_ids = stratified_choice(eligible, profiles, target_profiles, n, seed if randomize else None)
    else:
        order = np.random.default_rng(seed).permutation(len(eligible)) if randomize else range(len(eligible))
        chosen_ids = [eligible[i] for i in order][:n]
    chosen = [(images[i]["file_name"], len(profiles[i]["sizes"])) for i in chosen_ids]
    return chosen, reasons, len(eligible)


def reason_left_out(image, profile, images_dir, min_persons, min_keypoints, max_persons, min_visible, sizes):
    persons = len(profile["sizes"])
    counted = f"person(s) with >= {min_keypoints} labelled" + (f" and >= {min_visible} visible" if min_visible
                                                               else "") + " keypoints"
    if persons < min_persons:
        return f"fewer than {min_persons} {counted}"
    if max_persons is not None and persons > max_persons:
        return f"more than {max_persons} {counted}"
    if persons and tuple(sizes) != SIZE_CLASSES and not set(profile["sizes"]) & set(sizes):
        return f"no person of size {'/'.join(sizes)}"
    if not (Path(images_dir) / image["file_name"]).is_file():
        return f"image file missing from {images_dir}"
    return None


def load_coco(path, flag):
    """The annotations file through the one COCO reader, its message naming the flag."""
    try:
        return read_coco_json(path)
    except BpnetError as err:
        raise BpnetError(f"{flag}: {err}") from None


def sample_calibration(annotations, images_dir, out_dir, n, min_persons=1, min_keypoints=1,
                       randomize=False, seed=0, link=False, *, max_persons=None, min_visible=0,
                       sizes=SIZE_CLASSES, stratify=False, eval_annotations=None):
    """Copy (or symlink) the chosen images into `out_dir`; returns the report (also written to
    OUT_DIR/calibration_images.json). `eval_annotations`: the data the model will be scored on
    (stratification target and the mix comparison; default `annotations`)."""
    order = "stratified" if stratify else "random" if randomize else "name"
    check_sampling_options(n, min_persons, min_keypoints, max_persons, min_visible, sizes, order)
    coco = load_coco(annotations, "-a/--annotations")
    target = load_coco(eval_annotations, "--eval_annotations") if eval_annotations is not None else None
    if not Path(images_dir).is_dir():
        raise BpnetError(f"-i/--images: {images_dir} is not a folder")
    out_dir = Path(out_dir)
    if out_dir.is_dir() and count_images(out_dir):
        raise BpnetError(f"-o/--output_dir: {out_dir} already holds images; choose a new or empty folder "
                         "so the calibration set is exactly what this command chose")
    chosen, reasons, eligible = select_images(
        coco, images_dir, n, min_persons, min_keypoints, randomize, seed, max_persons=max_persons,
        min_visible=min_visible, sizes=sizes, stratify=stratify, target_coco=target)
    if not chosen:
        why = "; ".join(f"{count} left out: {why}" for why, count in reasons.items()) or "it lists no images"
        raise BpnetError(f"-a/--annotations: none of the {len(coco['images'])} images of {annotations} "
                         f"meets the criteria ({why}); nothing written - relax the criteria or check "
                         "-i/--images")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, _ in chosen:
        source, target_path = Path(images_dir) / name, out_dir / name
        if link:
            os.symlink(source.resolve(), target_path)
        else:
            shutil.copy2(source, target_path)
    mix = compare_mix(coco, [name for name, _ in chosen], target or coco, min_keypoints, min_visible)
    report = {
        "annotations": str(annotations), "images": str(images_dir), "output_dir": str(out_dir),
        "eval_annotations": str(eval_annotations or annotations),
        "requested": n, "chosen": len(chosen), "eligible": eligible,
        "total_images": len(coco["images"]),
        "criteria": {"min_persons": min_persons, "max_persons": max_persons, "min_keypoints": min_keypoints,
                     "min_visible": min_visible, "sizes": list(sizes),
                     "order": f"{order} (seed {seed})" if order == "random" or (stratify and randomize)
                     else order},
        "left_out": reasons, "files": [{"file_name": f, "persons": p} for f, p in chosen],
        "mix": mix, "warnings": mix_warnings(mix["calibration"], mix["evaluation"]),
        "shortfall": None if len(chosen) >= n else (
            f"only {eligible} of {len(coco['images'])} images meet the criteria; " +
            "; ".join(f"{count} left out: {why}" for why, count in reasons.items())),
    }
    write_json_atomic(out_dir / REPORT_NAME, report)
    return report


def compare_mix(coco, file_names, eval_coco, min_keypoints=1, min_visible=0):
    """{"calibration": mix of the named images of `coco`, "evaluation": mix of `eval_coco`'s
    images} (see `data_mix`); people are counted with the same criteria on both sides."""
    profiles = image_profiles(coco, min_keypoints, min_visible)
    by_name = {im["file_name"]: im["id"] for im in coco.get("images", [])}
    eval_profiles = image_profiles(eval_coco, min_keypoints, min_visible)
    return {"calibration": data_mix(profiles, [by_name[f] for f in file_names if f in by_name]),
            "evaluation": data_mix(eval_profiles, list(eval_profiles))}
