"""Dataset statistics before a run: who is in the images and how big they are.

Pure functions over a COCO person-keypoints dictionary (no images are read: the annotation file
holds every size we need). The numbers feed the recommendations in `bpnet.guide.recommend`.

Size ranges follow COCO's area thresholds: small < 32², medium 32²–96², large > 96² (pixels of
the original image). Because the seed's resolution advice was measured on COCO (long side about
640 px), sizes are also reported after scaling each image to a 640-px long side, so the rules
transfer to datasets of larger or smaller images.
"""

import numpy as np

from bpnet.data.coco import read_coco_json

SMALL_MAX_AREA = 32 ** 2
MEDIUM_MAX_AREA = 96 ** 2
COCO_LONG_SIDE_PX = 640
NUM_COCO_KEYPOINTS = 17


def person_area(ann):
    """COCO's area of an annotation (segment area), falling back to the box when absent."""
    if ann.get("area"):
        return float(ann["area"])
    bbox = ann.get("bbox") or [0, 0, 0, 0]
    return float(bbox[2]) * float(bbox[3])


def labelled_keypoints(ann):
    """Number of labelled keypoints (v > 0) of one annotation."""
    keypoints = ann.get("keypoints") or []
    return int(sum(1 for v in keypoints[2::3] if v > 0))


def area_range_counts(areas):
    """{small, medium, large} counts and fractions of an array of areas (pixels²)."""
    areas = np.asarray(areas, dtype=np.float64)
    counts = {
        "small": int(np.sum(areas < SMALL_MAX_AREA)),
        "medium": int(np.sum((areas >= SMALL_MAX_AREA) & (areas <= MEDIUM_MAX_AREA))),
        "large": int(np.sum(areas > MEDIUM_MAX_AREA)),
    }
    total = max(1, len(areas))
    return {"counts": counts, "fractions": {k: v / total for k, v in counts.items()}}


def summarize(values):
    """min / median / mean / p90 / max of a list (zeros when empty), as plain floats."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return {"count": 0, "min": 0.0, "median": 0.0, "mean": 0.0, "p90": 0.0, "max": 0.0}
    return {"count": int(values.size), "min": float(values.min()), "median": float(np.median(values)),
            "mean": float(values.mean()), "p90": float(np.percentile(values, 90)),
            "max": float(values.max())}


def dataset_stats(coco):
    """Statistics of a COCO person-keypoints dict.

    People = non-crowd annotations with at least one labelled keypoint (the ones the keypoint
    AP scores and the network learns from); crowd regions are counted separately.
    """
    images = {image["id"]: image for image in coco["images"]}
    people_per_image = {image_id: 0 for image_id in images}
    keypoints_per_person, areas, areas_at_640, height_fractions = [], [], [], []
    num_crowd = num_unlabelled = 0
    for ann in coco["annotations"]:
        if ann.get("iscrowd", 0):
            num_crowd += 1
            continue
        n_kp = labelled_keypoints(ann)
        if n_kp == 0:
            num_unlabelled += 1
            continue
        image = images[ann["image_id"]]
        people_per_image[ann["image_id"]] += 1
        keypoints_per_person.append(n_kp)
        area = person_area(ann)
        areas.append(area)
        to_640 = COCO_LONG_SIDE_PX / max(image["width"], image["height"])
        areas_at_640.append(area * to_640 ** 2)
        bbox = ann.get("bbox") or [0, 0, 0, 0]
        height_fractions.append(float(bbox[3]) / image["height"])
    counts = np.array(list(people_per_image.values()))
    with_people = counts[counts > 0]
    heights = np.array([image["height"] for image in images.values()], dtype=np.float64)
    widths = np.array([image["width"] for image in images.values()], dtype=np.float64)
    return {
        "num_images": len(images),
        "num_images_with_people": int(with_people.size),
        "num_people": int(counts.sum()),
        "num_crowd_regions": num_crowd,
        "num_people_without_keypoints": num_unlabelled,
        "people_per_image": summarize(with_people),
        "people_per_image_histogram": _histogram(counts),
        "keypoints_per_person": summarize(keypoints_per_person),
        "area_ranges": area_range_counts(areas),
        "area_ranges_at_640": area_range_counts(areas_at_640),
        "person_height_fraction": summarize(height_fractions),
        "image_height": summarize(heights),
        "image_width": summarize(widths),
        "image_aspect_ratio": summarize(widths / heights),   # W / H
    }


def _histogram(counts):
    """{'0': n0, '1': n1, ..., '5+': n} images by number of people (string keys: JSON-ready)."""
    counts = np.asarray(counts)
    histogram = {str(k): int(np.sum(counts == k)) for k in range(5)}
    histogram["5+"] = int(np.sum(counts >= 5))
    return histogram


def dataset_stats_file(path):
    """Statistics of the COCO annotation file at `path`."""
    return dataset_stats(read_coco_json(path))
