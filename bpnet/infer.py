"""Running a model on images: preprocessing, the backend, multi-scale averaging, decoding, drawing.

`infer_images` is the loop shared by `bpnet inference` and `bpnet evaluate`: it times the network
(`cnn`) and the decoder (`decode`) separately, because they are optimised by different means
(pruning/INT8 vs. decoder settings). `run_inference` is the `bpnet inference` verb.
"""

import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from bpnet.decode import decode, decode_options, person_to_coco
from bpnet.draw import draw_skeletons
from bpnet.errors import BpnetError
from bpnet.events import emit
from bpnet.fileio import atomic_path, read_json, write_json_atomic, write_text_atomic
from bpnet.image_files import IMAGE_SUFFIXES
from bpnet.image_files import list_images
from bpnet.preprocess import STRIDE, normalization_for, prepare_batch, read_image
from bpnet.skeleton import load_skeleton
from bpnet.specs import spec_to_yaml


@dataclass(frozen=True)
class ImageItem:
    image_id: int
    path: Path


@dataclass
class Detections:
    """One image's decoded people (network-input pixels) and how to map them to the image.

    `timing_ms`: this image's read / prepare (letterbox + normalise) / cnn / decode milliseconds;
    read, prepare and cnn are shared equally by the images of one batch."""
    item: ImageItem
    people: list
    letterbox: object
    timing_ms: dict = None


# ---------------------------------------------------------------- image lists

def image_items(source, images_dir=None):
    """Images to run: one image, every image file of a folder, every image of a COCO JSON, or
    the paths of a JSON list (TAO's `--input_type json`).

    Folder images get the number in their file name as id when it is one (COCO's 000000123.jpg ->
    123), else their position in name order. A COCO JSON's file names are looked up in
    `images_dir` (default: the JSON's folder).
    """
    source = Path(source)
    if source.is_dir():
        files = list_images(source)
        if not files:
            raise BpnetError(f"image folder {source} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return _numbered(files)
    if source.suffix.lower() in IMAGE_SUFFIXES:
        return _numbered([source])
    if source.suffix.lower() == ".json":
        data = read_json(source, "COCO image list")
        if isinstance(data, list):
            return _path_list(source, data, images_dir)
        images = data.get("images") if isinstance(data, dict) else None
        if not isinstance(images, list) or not images:
            raise BpnetError(f"COCO image list {source}: needs a non-empty 'images' list of "
                             "{id, file_name} entries")
        base = Path(images_dir) if images_dir else source.parent
        try:
            return [ImageItem(int(im["id"]), base / im["file_name"]) for im in images]
        except (KeyError, TypeError, ValueError):
            raise BpnetError(f"COCO image list {source}: every 'images' entry needs an integer 'id' "
                             "and a 'file_name'") from None
    raise BpnetError(f"images: {source} is neither a folder of images, an image, nor a JSON file "
                     "(COCO, or a list of image paths)")


def _numbered(files):
    """Ids from the numbers in COCO-style file names when they are unique numbers, else positions."""
    numeric = all(p.stem.isdigit() for p in files) and len({int(p.stem) for p in files}) == len(files)
    return [ImageItem(int(p.stem) if numeric else i, p) for i, p in enumerate(files)]


def _path_list(source, data, images_dir=None):
    """TAO's `--input_type json`: a JSON list of image paths (relative ones under `images_dir`)."""
    if not data or not all(isinstance(p, str) for p in data):
        raise BpnetError(f"image list {source}: needs a non-empty list of image paths (strings)")
    base = Path(images_dir) if images_dir else Path()
    return _numbered([base / p for p in data])


# ---------------------------------------------------------------- network

def check_backend_fits(backend, spec):
    """The spec's input size and scales must be ones the backend can run."""
    fixed = backend.input_hw
    if fixed is None:
        return
    if tuple(fixed) != tuple(spec.input_shape):
        raise BpnetError(f"inference spec input_shape {list(spec.input_shape)} does not match the "
                         f"{backend.name} model's fixed input {list(fixed)}; set input_shape to "
                         f"{list(fixed)} or export the model with that size")
    if spec.keep_aspect_ratio_mode != "pad_image_input":
        raise BpnetError(f"keep_aspect_ratio_mode adjust_network_input needs a model that accepts any "
                         f"width; this {backend.name} model has a fixed input {list(fixed)}: use "
                         "pad_image_input")
    if spec.multi_scale_inference and any(s != 1.0 for s in spec.scales):
        raise BpnetError(f"multi_scale_inference with scales {list(spec.scales)} needs a model that "
                         f"accepts any input size; this {backend.name} model has a fixed input "
                         f"{list(fixed)}: set multi_scale_inference to false")


def scaled_hw(input_hw, scale):
    """(H, W) * scale rounded to the nearest multiple of the stride (at least one stride)."""
    return tuple(max(STRIDE, int(round(v * scale / STRIDE)) * STRIDE) for v in input_hw)


def predict_maps(backend, images, spec):
    """BGR images -> (heatmaps, pafs, letterboxes, cnn_seconds, prepare_seconds) at the spec's resolution.

    With multi-scale inference the maps of every scale are resized to the scale-1 grid and
    averaged; the letterbox places the image proportionally at every scale, so cells line up
    to within the rounding of the image size to whole pixels.
    """
    scales = spec.scales if spec.multi_scale_inference else (1.0,)
    norm = normalization_for(spec.normalization, backend.normalization, "inference spec normalization")
    start = time.perf_counter()
    base, letterboxes = prepare_batch(images, spec.input_shape, spec.keep_aspect_ratio_mode,
                                      norm.image_scale, norm.image_offset)
    prepare_s = time.perf_counter() - start
    grid_hw = (base.shape[1] // STRIDE, base.shape[2] // STRIDE)
    sum_heat, sum_paf, cnn_s = 0.0, 0.0, 0.0
    for scale in scales:
        start = time.perf_counter()
        batch = base if scale == 1.0 else prepare_batch(
            images, scaled_hw(spec.input_shape, scale), spec.keep_aspect_ratio_mode,
            norm.image_scale, norm.image_offset)[0]
        prepare_s += time.perf_counter() - start
        start = time.perf_counter()
        heatmaps, pafs = backend.predict(batch)
        cnn_s += time.perf_counter() - start
        sum_heat = sum_heat + resize_maps(np.asarray(heatmaps, np.float32), grid_hw)
        sum_paf = sum_paf + resize_maps(np.asarray(pafs, np.float32), grid_hw)
    return sum_heat / len(scales), sum_paf / len(scales), letterboxes, cnn_s, prepare_s


def resize_maps(maps, grid_hw):
    """(N, h, w, C) -> (N, grid_h, grid_w, C), bicubic; unchanged when already that size."""
    if maps.shape[1:3] == tuple(grid_hw):
        return maps
    out = np.empty((maps.shape[0], *grid_hw, maps.shape[-1]), np.float32)
    for i, m in enumerate(maps):
        # cv2.resize handles at most 512 channels at once; our maps have 19 and 38.
        out[i] = cv2.resize(m, (grid_hw[1], grid_hw[0]), interpolation=cv2.INTER_CUBIC).reshape(out.shape[1:])
    return out


# ---------------------------------------------------------------- the loop

def infer_images(backend, items, spec, skeleton, progress=None, stage="inference"):
    """Run + decode every image; returns (list of Detections, COCO results, timing dict)."""
    check_backend_fits(backend, spec)
    options = decode_options(spec)
    detections, results = [], []
    seconds = {"read": 0.0, "prepare": 0.0, "cnn": 0.0, "decode": 0.0}
    for start in range(0, len(items), spec.batch_size):
        chunk = items[start:start + spec.batch_size]
        t0 = time.perf_counter()
        images = [read_image(item.path) for item in chunk]
        read_s = time.perf_counter() - t0
        heatmaps, pafs, letterboxes, cnn_s, prepare_s = predict_maps(backend, images, spec)
        for name, value in (("read", read_s), ("cnn", cnn_s), ("prepare", prepare_s)):
            seconds[name] += value
        shared_ms = {"read": 1000 * read_s / len(chunk), "prepare": 1000 * prepare_s / len(chunk),
                     "cnn": 1000 * cnn_s / len(chunk)}
        for item, heat, paf, box in zip(chunk, heatmaps, pafs, letterboxes):
            t0 = time.perf_counter()
            people = decode(heat, paf, skeleton, **options)
            decode_s = time.perf_counter() - t0
            seconds["decode"] += decode_s
            detections.append(Detections(item, people, box, {**shared_ms, "decode": 1000 * decode_s}))
            results.extend(person_to_coco(p, box, skeleton, item.image_id) for p in people)
        done = start + len(chunk)
        emit(progress, stage, "step", step=done, num_steps=len(items), fraction=done / len(items))
    return detections, results, timing_per_image(seconds, len(items))


def timing_per_image(seconds, num_images):
    n = max(num_images, 1)
    return {"read_ms_per_image": round(1000 * seconds["read"] / n, 3),
            "prepare_ms_per_image": round(1000 * seconds["prepare"] / n, 3),
            "cnn_ms_per_image": round(1000 * seconds["cnn"] / n, 3),
            "decode_ms_per_image": round(1000 * seconds["decode"] / n, 3)}


# ---------------------------------------------------------------- drawing

def draw_people(image, people, letterbox, skeleton):
    """A copy of the BGR `image` with every decoded person drawn in image coordinates."""
    parts = [np.column_stack([letterbox.to_image(p.keypoints[:, :2]), p.found]) for p in people]
    return draw_skeletons(image, parts, skeleton)


def write_image_atomic(path, image):
    with atomic_path(path) as tmp:
        ok, data = cv2.imencode(Path(path).suffix or ".jpg", image)
        if not ok:
            raise BpnetError(f"could not encode the drawn image {path}")
        tmp.write_bytes(data.tobytes())


# ---------------------------------------------------------------- the verb

def run_inference(model_path, images, infer_spec, out_dir, dump_visualizations=False,
                  images_dir=None, progress=None):
    """`bpnet inference`: results.json (COCO results) and optionally drawn images in out_dir."""
    from bpnet.backends import load_backend

    out_dir = Path(out_dir)
    skeleton = load_skeleton(infer_spec.skeleton)
    items = image_items(images, images_dir)
    emit(progress, "inference", "start", num_steps=len(items), message=f"{len(items)} images")
    with load_backend(model_path, stage=infer_spec.output_stage_to_use) as backend:
        detections, results, timing = infer_images(backend, items, infer_spec, skeleton, progress)
        backend_info = backend.describe()
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "spec.yaml", spec_to_yaml(infer_spec))
    if dump_visualizations:
        for det in detections:
            drawn = draw_people(read_image(det.item.path), det.people, det.letterbox, skeleton)
            write_image_atomic(out_dir / "images_annotated" / f"{det.item.path.stem}.jpg", drawn)
    summary = {"model": str(model_path), "num_images": len(items), "num_people": len(results),
               "timing": timing, **backend_info}
    write_json_atomic(out_dir / "inference_summary.json", summary)
    emit(progress, "inference", "end", message=f"{len(results)} people in {len(items)} images")
    return summary
