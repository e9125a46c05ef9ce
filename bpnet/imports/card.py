"""The model card: what a pretrained network expects and how its channels map to our skeleton.

A card is YAML written by a person (parsed once here into a validated object, unknown keys
rejected) and travels with the model: beside it as `MODEL.card.yaml` and inside it (the HDF5
attribute `bpnet_model_card`, the ONNX metadata key of the same name), so every backend, the
export and the dashboard can read it from the model file alone.

Channel maps are by name: heatmap channel c of the source is part `heatmaps.parts[c]`, PAF plane
p of the source is limb `pafs.limbs[p]` = [from, to] (the vector points from `from` to `to`),
its two channels in `pafs.xy_order`. `skeleton_map` turns that into, for every channel of our
skeleton, the source channel it comes from and a sign (-1 where a limb runs the other way).
"""

import hashlib
from pathlib import Path
from typing import Literal, Optional

import numpy as np
import yaml
from pydantic import Field, field_validator

from bpnet.errors import BpnetError
from bpnet.limits import CALIBRATORS
from bpnet.specs import NormalizationSpec, Strict, TargetSpec, load_yaml, parse_spec

CARD_KEY = "bpnet_model_card"     # HDF5 attribute / ONNX metadata_props key
CARD_SUFFIX = ".card.yaml"
BACKGROUND = "background"


class InputSpec(Strict):
    colour_order: Literal["BGR", "RGB"]
    # network input = pixel / image_scale - image_offset, per channel of `colour_order`
    normalization: NormalizationSpec
    training_hw: tuple[int, int]               # the resolution the network was trained at
    stride: int = Field(8, ge=1)               # input pixels per output map cell
    size_multiple: int = Field(8, ge=1)        # H and W must be multiples of this

    @field_validator("training_hw")
    @classmethod
    def _positive(cls, value):
        if min(value) <= 0:
            raise ValueError("H and W must be positive")
        return value


class HeatmapMap(Strict):
    first_channel: int = Field(0, ge=0)
    parts: tuple[str, ...]                     # source channel order; `background` may be one


class PafMap(Strict):
    first_channel: int = Field(ge=0)
    xy_order: Literal["xy", "yx"] = "xy"
    limbs: tuple[tuple[str, str], ...]         # source plane order, [from, to]


class OutputSpec(Strict):
    tensor: Optional[str] = None               # the source's output holding both (None = its only one)
    heatmaps: HeatmapMap
    pafs: PafMap


class ModelCard(Strict):
    name: str
    origin: str                                # where the file came from (URL, commit, folder)
    licence: str
    source_sha256: Optional[str] = None        # filled in by `bpnet import` when absent
    skeleton: str = "bpnet_18joints"
    input: InputSpec
    output: OutputSpec
    # The targets the source was trained on (heatmap Gaussian sigma, PAF band half-width, in
    # input pixels): retraining an imported network follows them (bpnet.train.follow_model_card),
    # so a short fine-tune does not first have to unlearn its peaks' and bands' widths.
    # None: unknown, our defaults are used.
    targets: Optional[TargetSpec] = None
    # the INT8 calibrator measured best for this network (docs/int8.md); the explorer's default
    int8_calibrator: Optional[Literal[CALIBRATORS]] = None
    notes: str = ""

    @field_validator("source_sha256")
    @classmethod
    def _hex(cls, value):
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
            raise ValueError("must be the 64 hex digits of the file's SHA-256")
        return value.lower() if value else value

    @property
    def num_source_channels(self):
        return len(self.output.heatmaps.parts) + 2 * len(self.output.pafs.limbs)


# ---------------------------------------------------------------- reading and writing

def parse_card(data, source="model card"):
    if not isinstance(data, dict):
        raise BpnetError(f"{source} must be a mapping of fields, got {type(data).__name__}")
    return parse_spec(ModelCard, data, source)


def load_card(path):
    path = Path(path)
    return parse_card(load_yaml(path, "model card"), f"model card {path}")


def card_to_yaml(card):
    return yaml.safe_dump(card.model_dump(mode="json"), sort_keys=False)


def card_from_text(text, source):
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise BpnetError(f"{source}: the stored model card is not valid YAML: {err}") from None
    return parse_card(data, source)


def card_path_for(model_path):
    """Where the card beside a model lives: MODEL.hdf5 -> MODEL.card.yaml."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.stem + CARD_SUFFIX)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_model_card(model_path):
    """The card stored in a model file (.hdf5 attribute or ONNX metadata), or None."""
    path = Path(model_path)
    suffix = path.suffix.lower()
    if suffix in (".hdf5", ".h5"):
        import h5py
        try:
            with h5py.File(path, "r") as f:
                text = f.attrs.get(CARD_KEY)
        except OSError:
            return None
        if text is None:
            return None
        text = text.decode() if isinstance(text, bytes) else str(text)
    elif suffix == ".onnx":
        import onnx
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # not our problem here: the backend reports unreadable files
            return None
        text = next((p.value for p in proto.metadata_props if p.key == CARD_KEY), None)
        if text is None:
            return None
    else:
        return None
    return card_from_text(text, f"model {path}")


def write_card_into_hdf5(path, card):
    import h5py
    with h5py.File(path, "a") as f:
        f.attrs[CARD_KEY] = card_to_yaml(card)


def copy_card_into_hdf5(source_model, target_path):
    """Give `target_path` (an HDF5 being written) the card of `source_model`, if it has one."""
    card = read_model_card(source_model)
    if card is not None:
        write_card_into_hdf5(target_path, card)
    return card


def set_onnx_card(proto, card):
    """Store `card` in an ONNX ModelProto's metadata (replacing an older one)."""
    keep = [p for p in proto.metadata_props if p.key != CARD_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    entry = proto.metadata_props.add()
    entry.key, entry.value = CARD_KEY, card_to_yaml(card)
    return proto


def bgr_normalization(card):
    """The card's normalisation for BGR pixels. Imported models always take BGR (an RGB source
    gets its first convs' input channels swapped at import), so for an RGB card the per-channel
    values are reversed."""
    norm = card.input.normalization
    if card.input.colour_order == "BGR":
        return norm
    return NormalizationSpec(image_scale=tuple(norm.image_scale[::-1]),
                             image_offset=tuple(norm.image_offset[::-1]))


def recommended_calibrator(model_path):
    """The INT8 calibrator a model file's card recommends, or None (no card, or none given)."""
    card = read_model_card(model_path)
    return card.int8_calibrator if card else None


def model_normalization(model_path):
    """The BGR normalisation a model file's card prescribes, or None when it has no card."""
    card = read_model_card(model_path)
    return bgr_normalization(card) if card else None


def model_targets(model_path):
    """The training targets a model file's card records, or None (no card, or not recorded)."""
    card = read_model_card(model_path)
    return card.targets if card else None


# ---------------------------------------------------------------- channel map

def skeleton_map(card, skeleton):
    """For our skeleton's channels: (heat_src, heat_sign, paf_src, paf_sign) numpy arrays.

    heat_src[c] is the source channel (offset included) our heatmap c comes from; paf_src[2i + k]
    the source channel of our limb i's component k (0 = x, 1 = y), negated where paf_sign is -1.
    A card that does not cover every part and limb of the skeleton is an error naming them.
    """
    heat, paf = card.output.heatmaps, card.output.pafs
    source_parts = {name: c for c, name in enumerate(heat.parts)}
    wanted_parts = list(skeleton.parts) + [BACKGROUND]
    missing = [p for p in wanted_parts if p not in source_parts]
    if missing:
        raise BpnetError(f"model card output.heatmaps.parts does not cover skeleton "
                         f"{skeleton.name!r}: missing {missing} (the card lists {list(heat.parts)})")
    heat_src = np.array([heat.first_channel + source_parts[p] for p in wanted_parts])
    heat_sign = np.ones(len(wanted_parts), np.float32)

    planes = {}
    for p, (a, b) in enumerate(paf.limbs):
        planes[(a, b)] = (p, 1.0)
        planes.setdefault((b, a), (p, -1.0))
    xy = (0, 1) if paf.xy_order == "xy" else (1, 0)
    paf_src, paf_sign, missing = [], [], []
    for a_idx, b_idx in skeleton.limbs:
        key = (skeleton.parts[a_idx], skeleton.parts[b_idx])
        if key not in planes:
            missing.append(list(key))
            continue
        plane, sign = planes[key]
        paf_src += [paf.first_channel + 2 * plane + xy[0], paf.first_channel + 2 * plane + xy[1]]
        paf_sign += [sign, sign]
    if missing:
        raise BpnetError(f"model card output.pafs.limbs does not cover skeleton {skeleton.name!r}: "
                         f"missing limbs {missing} (in either direction)")
    return heat_src, heat_sign, np.array(paf_src), np.array(paf_sign, np.float32)


def map_source_output(output, card, skeleton):
    """The source's (..., C) output -> (our heatmaps, our PAFs), following the card."""
    heat_src, heat_sign, paf_src, paf_sign = skeleton_map(card, skeleton)
    output = np.asarray(output, np.float32)
    return output[..., heat_src] * heat_sign, output[..., paf_src] * paf_sign
