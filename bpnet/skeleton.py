"""The pose configuration: which parts and limbs the network predicts, as data.

The skeleton is the channel-layout contract shared by the dataset reader, the target encoder, the
model head and the decoder: heatmap channel c is part c, the last heatmap channel is the
background, PAF channels (2i, 2i+1) hold the (x, y) components of limb i. Another skeleton is a
new JSON file in `bpnet/skeletons/` (or any path), not a code change.

Keypoints are arrays of (x, y, v) rows in pixels, with COCO's visibility flag v:
0 = not labelled, 1 = labelled but occluded, 2 = labelled and visible.
"""

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from bpnet.errors import BpnetError

SKELETON_DIR = Path(__file__).parent / "skeletons"
DEFAULT_SKELETON = "bpnet_18joints"


@dataclass(frozen=True)
class Skeleton:
    name: str
    parts: tuple            # part names in network channel order
    limbs: tuple            # (part_a, part_b) index pairs, in PAF channel order
    coco_keypoints: tuple   # keypoint names of the COCO-format annotations, in their order
    derived_parts: dict     # part name -> COCO keypoint names it is the midpoint of

    @property
    def num_parts(self):
        return len(self.parts)

    @property
    def num_heatmaps(self):
        return len(self.parts) + 1  # + background

    @property
    def num_pafs(self):
        return 2 * len(self.limbs)

    @property
    def flip_permutation(self):
        """Part index permutation for a horizontal flip: left_* <-> right_*."""
        index = {name: i for i, name in enumerate(self.parts)}
        return tuple(index[_mirror_name(name)] if _mirror_name(name) in index else i
                     for i, name in enumerate(self.parts))

    def coco_to_parts(self, keypoints):
        """(..., K_coco, 3) COCO keypoints -> (..., num_parts, 3) network parts.

        A derived part (the neck) is the midpoint of its sources and is labelled only when all of
        them are; its visibility is the minimum of theirs.
        """
        keypoints = np.asarray(keypoints, dtype=np.float32)
        coco_index = {name: i for i, name in enumerate(self.coco_keypoints)}
        parts = np.zeros(keypoints.shape[:-2] + (self.num_parts, 3), dtype=np.float32)
        for p, name in enumerate(self.parts):
            if name in self.derived_parts:
                src = keypoints[..., [coco_index[s] for s in self.derived_parts[name]], :]
                labelled = np.all(src[..., 2] > 0, axis=-1)
                parts[..., p, :2] = np.where(labelled[..., None], src[..., :2].mean(axis=-2), 0)
                parts[..., p, 2] = np.where(labelled, src[..., 2].min(axis=-1), 0)
            else:
                parts[..., p, :] = keypoints[..., coco_index[name], :]
        return parts

    def parts_to_coco(self, parts):
        """(..., num_parts, 3) network parts -> (..., K_coco, 3) COCO keypoints (derived parts dropped)."""
        parts = np.asarray(parts, dtype=np.float32)
        part_index = {name: i for i, name in enumerate(self.parts)}
        order = [part_index[name] for name in self.coco_keypoints]
        return parts[..., order, :]


def _mirror_name(name):
    if name.startswith("left_"):
        return "right_" + name[len("left_"):]
    if name.startswith("right_"):
        return "left_" + name[len("right_"):]
    return name


@lru_cache(maxsize=None)
def load_skeleton(name_or_path=DEFAULT_SKELETON):
    """A skeleton by bundled name (`bpnet_18joints`) or by path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = SKELETON_DIR / f"{name_or_path}.json"
    if not path.is_file():
        bundled = sorted(p.stem for p in SKELETON_DIR.glob("*.json"))
        raise BpnetError(f"skeleton {name_or_path!r} not found: give a JSON file path or one of {bundled}")
    try:
        raw = json.loads(path.read_text())
        parts = tuple(raw["parts"])
        coco = tuple(raw["coco_keypoints"])
        derived = {k: tuple(v) for k, v in raw.get("derived_parts", {}).items()}
        index = {n: i for i, n in enumerate(parts)}
        limbs = tuple((index[a], index[b]) for a, b in raw["limbs"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise BpnetError(f"skeleton file {path} is malformed ({type(err).__name__}: {err}); "
                         "it needs 'parts', 'coco_keypoints' and 'limbs' (pairs of part names)") from None
    for name in parts:
        if name not in coco and name not in derived:
            raise BpnetError(f"skeleton file {path}: part {name!r} is neither a COCO keypoint nor in derived_parts")
    for name, sources in derived.items():
        missing = [s for s in sources if s not in coco]
        if missing:
            raise BpnetError(f"skeleton file {path}: derived part {name!r} uses unknown keypoints {missing}")
    return Skeleton(name=raw.get("name", path.stem), parts=parts, limbs=limbs,
                    coco_keypoints=coco, derived_parts=derived)
