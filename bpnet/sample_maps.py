"""The raw network outputs of a few evaluation images, saved for the dashboard's heatmap and PAF
overlays (the dashboard never imports TensorFlow, so the maps come from the evaluate stage).

The images are the ones with the most annotated people (ties: lowest image id), so every result
evaluated on the same data saves the same images and two results can be shown side by side.
Maps are stored as float16, one array per image (`heatmaps_0`, `pafs_0`, ...; a 288x384 model's
3 images are ~1 MB before compression) with what places them on the
image: the letterbox scale and the network input size.

    save_sample_maps(model_path, annotations, images_dir, infer_spec, out_dir / "sample_maps.npz")
"""

import numpy as np

from bpnet.data.coco import labelled_people, read_coco_json
from bpnet.fileio import atomic_path
from bpnet.preprocess import read_image

SAMPLE_MAPS = "sample_maps.npz"
NUM_SAMPLE_IMAGES = 3


def images_with_most_people(coco, count=NUM_SAMPLE_IMAGES):
    """[(image_id, file_name)] of the images with the most labelled, non-crowd people."""
    people = {}
    for ann in labelled_people(coco):
        people[ann["image_id"]] = people.get(ann["image_id"], 0) + 1
    names = {img["id"]: img["file_name"] for img in coco.get("images", [])}
    ranked = sorted((i for i in people if i in names), key=lambda i: (-people[i], i))
    return [(i, names[i]) for i in ranked[:count]]


def save_sample_maps(model_path, annotations, images_dir, infer_spec, out_path, count=NUM_SAMPLE_IMAGES):
    """Predict the chosen images with the evaluated model and write the .npz; returns its path,
    or None when the evaluation set has no annotated people."""
    from pathlib import Path

    from bpnet.backends import load_backend
    from bpnet.infer import predict_maps

    chosen = images_with_most_people(read_coco_json(annotations), count)
    if not chosen:
        return None
    images = [read_image(Path(images_dir) / name) for _, name in chosen]
    heatmaps, pafs, boxes = [], [], []
    with load_backend(model_path, stage=infer_spec.output_stage_to_use) as backend:
        for image in images:   # one at a time: images of different shapes letterbox differently
            heat, paf, letterbox, _, _ = predict_maps(backend, [image], infer_spec)
            heatmaps.append(heat[0])
            pafs.append(paf[0])
            boxes.append(letterbox[0])
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp, open(tmp, "wb") as f:
        # one array per image: with adjust_network_input each image has its own width
        per_image = {f"{kind}_{k}": maps[k].astype(np.float16)
                     for kind, maps in (("heatmaps", heatmaps), ("pafs", pafs)) for k in range(len(chosen))}
        np.savez_compressed(
            f, image_ids=np.array([i for i, _ in chosen]), file_names=np.array([n for _, n in chosen]),
            scales=np.array([b.scale for b in boxes], np.float32),
            image_hw=np.array([b.image_hw for b in boxes], np.int32),
            input_hw=np.array([b.input_hw for b in boxes], np.int32), **per_image)
    return out_path
