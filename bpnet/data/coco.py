"""COCO person-keypoint reader: any COCO-format annotations file + its image folder -> samples.

Each image becomes a `Sample` holding the network parts (skeleton order, original pixels) of the
people that are trained on, and the segmentations of the regions the loss must ignore: crowd
regions and people with fewer than `min_keypoints` labelled keypoints (they are people, but the
targets cannot show them, so training them as background would teach the network to miss people).

Errors are checked where they can be cheaply: the JSON structure and every image file's existence
up front (a typo in a folder fails in a second, not after an hour); whether a JPEG decodes is
checked when the sample is read (`bpnet.preprocess.read_image` names the file).
"""

import contextlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from bpnet.errors import BpnetError
from bpnet.fileio import read_json

MAX_LISTED = 5  # missing files / bad annotations named in one error message
IMAGE_CHECK_SAMPLE = 20   # listed images `inspect_dataset` checks on disk: catches a wrong folder quickly


@dataclass(frozen=True)
class Sample:
    image_id: int
    image_path: Path
    height: int
    width: int
    parts: np.ndarray        # (num_people, P, 3) float32, (x, y, v) in original image pixels
    boxes: np.ndarray        # (num_people, 4) float32 COCO boxes (x, y, w, h) of the same people
    ignore_regions: tuple    # COCO segmentations (polygons or RLE) or boxes masked out of the loss

    @property
    def num_people(self):
        return int(self.parts.shape[0])


def load_coco_samples(annotations, images_dir, skeleton, min_keypoints=1, include_images_without_people=True):
    """All images of a COCO person-keypoints file as `Sample`s, in image-id order.

    Raises BpnetError when the file is missing/empty/not COCO, has no person category with the
    skeleton's keypoints, has a malformed keypoint list, has no trainable person at all, or when
    an image file is missing."""
    annotations, images_dir = Path(annotations), Path(images_dir)
    coco = read_coco(annotations)
    category_id = person_category(coco, annotations, skeleton)
    num_keypoints = len(skeleton.coco_keypoints)
    check_keypoint_lengths(coco, annotations, category_id, num_keypoints)
    samples = []
    for image_id in sorted(coco.getImgIds()):
        sample = image_sample(coco, image_id, images_dir, category_id, skeleton, min_keypoints)
        if sample.num_people or include_images_without_people:
            samples.append(sample)
    if not any(s.num_people for s in samples):
        raise BpnetError(f"COCO annotations file {annotations}: no person with at least {min_keypoints} "
                         f"labelled keypoints in {len(coco.getImgIds())} images; nothing to train on "
                         "(check the file, or lower dataset.min_keypoints)")
    check_images_exist(samples, images_dir)
    return samples


def read_coco(path):
    """A pycocotools COCO index of the file, with clear errors instead of tracebacks."""
    coco = COCO()
    coco.dataset = read_coco_json(path)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
        coco.createIndex()
    return coco


def read_coco_json(path):
    """The COCO annotations file as a dict, its structure checked (the one COCO reader: training,
    evaluation, the dashboard's dataset check and cost estimates read the file through it)."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise BpnetError(f"COCO annotations file {path} is empty; expected a COCO JSON object "
                         "with 'images', 'annotations' and 'categories'")
    data = read_json(path, "COCO annotations file")
    if not isinstance(data, dict):
        raise BpnetError(f"COCO annotations file {path}: expected a JSON object, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise BpnetError(f"COCO annotations file {path}: field {key!r} must be a list, "
                             f"got {_describe(data.get(key))}")
    for field, items in (("images", data["images"]), ("annotations", data["annotations"])):
        for item in items:
            needed = ("id", "file_name", "height", "width") if field == "images" else ("id", "image_id", "category_id")
            missing = [k for k in needed if not isinstance(item, dict) or k not in item]
            if missing:
                raise BpnetError(f"COCO annotations file {path}: an entry of {field!r} "
                                 f"(id {item.get('id') if isinstance(item, dict) else item!r}) lacks {missing}")
    if not data["images"]:
        raise BpnetError(f"COCO annotations file {path}: 'images' is empty; the dataset needs at least one image")
    check_unique_ids(data, path)
    check_references(data, path)
    return data


def check_references(data, path):
    """Sizes are positive, every annotation belongs to a listed image, and its keypoints (when its
    category names keypoints) are one x, y, v triple per keypoint name."""
    for image in data["images"]:
        if not all(isinstance(image[k], (int, float)) and image[k] > 0 for k in ("width", "height")):
            raise BpnetError(f"COCO annotations file {path}: image {image['id']} has width {image['width']!r} "
                             f"and height {image['height']!r}; both must be positive numbers")
    image_ids = {image["id"] for image in data["images"]}
    names = {c.get("id"): c.get("keypoints") for c in data["categories"] if isinstance(c, dict)}
    for ann in data["annotations"]:
        if ann["image_id"] not in image_ids:
            raise BpnetError(f"COCO annotations file {path}: annotation {ann['id']} has image_id "
                             f"{ann['image_id']!r}, which is not the id of any entry in 'images'")
        keypoints, expected = ann.get("keypoints"), names.get(ann["category_id"])
        if keypoints is not None and isinstance(expected, list) and \
                (not isinstance(keypoints, list) or len(keypoints) != 3 * len(expected)):
            raise BpnetError(f"COCO annotations file {path}: annotation {ann['id']} keypoints has "
                             f"{_describe(keypoints)} numbers; its category names {len(expected)} keypoints, "
                             f"so {3 * len(expected)} numbers (x, y, v triples) are expected")


@dataclass(frozen=True)
class DatasetInfo:
    """What `inspect_dataset` found: the files, and how many images and people they hold."""
    annotations: Path
    images: Path
    num_images: int
    num_people: int            # non-crowd person annotations
    num_people_with_keypoints: int
    num_images_with_keypoints: int
    bundled: bool = False


def default_images_dir(annotations):
    """COCO's layout: annotations/person_keypoints_<split>.json beside the image folder <split>/."""
    annotations = Path(annotations)
    split = annotations.stem.split("_")[-1]
    return annotations.parent.parent / split


_ANNOTATED_IMAGES = {}


def count_annotated_images(path):
    """Images with at least one labelled person in a COCO file; 0 for a file that cannot be read
    (a cost estimate's input: the run itself refuses such a file with the reason). Memoised on
    path, size and modification time: a real COCO file takes seconds to parse."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return 0
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _ANNOTATED_IMAGES:
        try:
            _ANNOTATED_IMAGES[memo] = len(annotated_image_ids(labelled_people(read_coco_json(path))))
        except (BpnetError, OSError):
            _ANNOTATED_IMAGES[memo] = 0
    return _ANNOTATED_IMAGES[memo]


def annotated_image_ids(people):
    """The ids of the images these person annotations are on."""
    return {a["image_id"] for a in people}


def labelled_people(data):
    """The non-crowd person annotations of a COCO dict with at least one labelled keypoint."""
    return [a for a in data["annotations"] if not a.get("iscrowd") and a.get("num_keypoints", 0) > 0]


def inspect_dataset(annotations, images=None, bundled=False):
    """Check a COCO person-keypoint dataset the user points at (the annotations file, or a folder
    holding annotations/person_keypoints_*.json; the image folder, default the COCO layout's) ->
    DatasetInfo. Quick: the structure and the first images listed, not every file."""
    text = str(annotations or "").strip()
    if not text:
        raise BpnetError("no annotations file given; enter the path of a COCO person_keypoints_*.json file")
    annotations = Path(text).expanduser()
    if annotations.is_dir():
        found = sorted(annotations.glob("annotations/person_keypoints_*.json"))
        if not found:
            raise BpnetError(f"{annotations} is a folder without annotations/person_keypoints_*.json; "
                             "give the annotations JSON file itself")
        annotations = found[0]
    if not annotations.is_file():
        raise BpnetError(f"annotations file {annotations} does not exist")
    data = read_coco_json(annotations)
    if not any(c.get("keypoints") for c in data["categories"] if isinstance(c, dict)):
        raise BpnetError(f"{annotations} has no category with keypoints; a person-keypoints file "
                         "(person_keypoints_*.json) is needed")
    with_keypoints = labelled_people(data)
    if not with_keypoints:
        raise BpnetError(f"{annotations} has no person with labelled keypoints; nothing to train or evaluate on")
    images = Path(str(images).strip()).expanduser() if images and str(images).strip() else default_images_dir(annotations)
    if not images.is_dir():
        raise BpnetError(f"image folder {images} does not exist; give the folder holding the "
                         f"images listed in {annotations.name}")
    listed = [img["file_name"] for img in data["images"][:IMAGE_CHECK_SAMPLE]]
    missing = [name for name in listed if not (images / name).is_file()]
    if missing:
        raise BpnetError(f"{len(missing)} of the first {len(listed)} images listed in "
                         f"{annotations.name} are missing from {images} (e.g. {missing[0]}); "
                         "is it the right image folder?")
    return DatasetInfo(annotations=annotations.resolve(), images=images.resolve(),
                       num_images=len(data["images"]),
                       num_people=sum(not a.get("iscrowd") for a in data["annotations"]),
                       num_people_with_keypoints=len(with_keypoints),
                       num_images_with_keypoints=len(annotated_image_ids(with_keypoints)),
                       bundled=bundled)


def check_unique_ids(data, path):
    """pycocotools keeps the last of two entries with one id and counts both in evaluation;
    training would use one image twice. Name both entries instead."""
    for field, describe in (("images", lambda e: repr(e.get("file_name"))),
                            ("annotations", lambda e: f"of image {e.get('image_id')}")):
        seen = {}
        for entry in data[field]:
            if not isinstance(entry, dict) or "id" not in entry:
                continue   # read_coco names malformed entries itself
            first = seen.setdefault(entry["id"], entry)
            if first is not entry:
                raise BpnetError(f"COCO annotations file {path}: {field} {describe(first)} and "
                                 f"{describe(entry)} have the same id {entry['id']}; ids must be unique")


def person_category(coco, path, skeleton):
    """Id of the category named 'person' whose keypoint names are the skeleton's COCO keypoints."""
    people = [c for c in coco.dataset["categories"] if isinstance(c, dict) and c.get("name") == "person"]
    if not people or not people[0].get("keypoints"):
        names = [c.get("name") for c in coco.dataset["categories"] if isinstance(c, dict)]
        raise BpnetError(f"COCO annotations file {path}: no 'person' category with 'keypoints' "
                         f"(categories present: {names or 'none'}); a COCO person-keypoints file is needed")
    category = people[0]
    if tuple(category["keypoints"]) != tuple(skeleton.coco_keypoints):
        raise BpnetError(f"COCO annotations file {path}: the person category's keypoints "
                         f"{category['keypoints']} differ from skeleton {skeleton.name!r}'s "
                         f"coco_keypoints {list(skeleton.coco_keypoints)}; use a matching skeleton file")
    return category["id"]


def check_keypoint_lengths(coco, path, category_id, num_keypoints):
    """Every non-crowd person annotation has 3 * K numbers (x, y, v per keypoint)."""
    bad = []
    for ann in coco.loadAnns(coco.getAnnIds(catIds=[category_id])):
        if ann.get("iscrowd"):
            continue
        keypoints = ann.get("keypoints", [])
        if not isinstance(keypoints, list) or len(keypoints) != 3 * num_keypoints \
                or not all(isinstance(k, (int, float)) for k in keypoints):
            bad.append(f"id {ann['id']} ({_describe(keypoints)})")
    if bad:
        raise BpnetError(f"COCO annotations file {path}: {len(bad)} person annotation(s) with malformed "
                         f"'keypoints' (need a list of {3 * num_keypoints} numbers x, y, v): "
                         f"{', '.join(bad[:MAX_LISTED])}{' ...' if len(bad) > MAX_LISTED else ''}")


def image_sample(coco, image_id, images_dir, category_id, skeleton, min_keypoints):
    """The kept people and the ignore regions of one image."""
    info = coco.imgs[image_id]
    kept_keypoints, kept_boxes, ignore = [], [], []
    for ann in coco.loadAnns(coco.getAnnIds(imgIds=[image_id], catIds=[category_id], iscrowd=None)):
        if ann.get("iscrowd"):  # crowd keypoints, if any, are not checked: crowds are only masked
            ignore.append(ignore_region(ann))
            continue
        keypoints = np.asarray(ann.get("keypoints") or [], np.float32).reshape(-1, 3)
        num_labelled = int((keypoints[:, 2] > 0).sum()) if keypoints.size else 0
        if num_labelled < max(min_keypoints, 1):
            ignore.append(ignore_region(ann))
        else:
            kept_keypoints.append(keypoints)
            kept_boxes.append(ann.get("bbox") or keypoint_box(keypoints))
    num_parts = skeleton.num_parts
    parts = skeleton.coco_to_parts(np.stack(kept_keypoints)) if kept_keypoints \
        else np.zeros((0, num_parts, 3), np.float32)
    return Sample(image_id=int(image_id), image_path=images_dir / info["file_name"],
                  height=int(info["height"]), width=int(info["width"]), parts=parts,
                  boxes=np.asarray(kept_boxes, np.float32).reshape(-1, 4), ignore_regions=tuple(ignore))


def ignore_region(ann):
    """A masked annotation's segmentation, or its box when it has none."""
    segmentation = ann.get("segmentation")
    if segmentation:
        return segmentation
    return {"box": list(ann.get("bbox") or [0, 0, 0, 0])}


def keypoint_box(keypoints):
    """(x, y, w, h) around the labelled keypoints (for annotations that lack a bbox)."""
    xy = keypoints[keypoints[:, 2] > 0, :2]
    (x0, y0), (x1, y1) = xy.min(axis=0), xy.max(axis=0)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def check_images_exist(samples, images_dir):
    """Every image file is present and not empty (whether it decodes is checked when read)."""
    if not images_dir.is_dir():
        raise BpnetError(f"images folder not found: {images_dir} (dataset.images must be the folder "
                         "holding the files named by the annotations' 'file_name')")
    missing = [s.image_path.name for s in samples if not s.image_path.is_file()]
    if missing:
        raise BpnetError(f"{len(missing)} of {len(samples)} image files named in the annotations are missing "
                         f"from {images_dir}: {', '.join(missing[:MAX_LISTED])}"
                         f"{' ...' if len(missing) > MAX_LISTED else ''}")
    empty = [s.image_path.name for s in samples if s.image_path.stat().st_size == 0]
    if empty:
        raise BpnetError(f"{len(empty)} image files in {images_dir} are empty (0 bytes): "
                         f"{', '.join(empty[:MAX_LISTED])}{' ...' if len(empty) > MAX_LISTED else ''}")


def load_mask(sample):
    """(height, width) float32 loss mask: 1 = train on it, 0 = crowd or under-labelled person."""
    mask = np.ones((sample.height, sample.width), np.float32)
    for region in sample.ignore_regions:
        try:
            region_pixels = region_mask(region, sample.height, sample.width)
        except (TypeError, ValueError, KeyError, IndexError) as err:
            raise BpnetError(f"image {sample.image_path.name} (id {sample.image_id}): a crowd or unlabelled "
                             f"person's 'segmentation' is malformed ({err}); expected polygons "
                             "[[x1, y1, x2, y2, ...], ...] or an RLE {'size', 'counts'}") from None
        mask[region_pixels > 0] = 0.0
    return mask


def region_mask(region, height, width):
    """(height, width) uint8 of one segmentation: polygons, (un)compressed RLE, or {'box': xywh}."""
    if isinstance(region, dict) and "box" in region:
        x, y, w, h = region["box"]
        out = np.zeros((height, width), np.uint8)
        out[max(0, int(y)):max(0, int(np.ceil(y + h))), max(0, int(x)):max(0, int(np.ceil(x + w)))] = 1
        return out
    if isinstance(region, list):  # polygons: one RLE per polygon, merged (as COCO.annToRLE does)
        rle = mask_utils.merge(mask_utils.frPyObjects(region, height, width))
    elif isinstance(region.get("counts"), list):  # uncompressed RLE (crowd regions)
        rle = mask_utils.frPyObjects(region, height, width)
    else:
        rle = region
    with warnings.catch_warnings():
        # pycocotools' decode trips a numpy 2 DeprecationWarning on every call; harmless.
        warnings.simplefilter("ignore", DeprecationWarning)
        return mask_utils.decode(rle)


def _describe(value):
    if isinstance(value, list):
        return f"a list of {len(value)}"
    return f"{type(value).__name__} {value!r}"[:60]
