"""The one preprocessing path: image file -> network input, and network coords -> image coords.

Training, calibration, evaluation and every inference backend call these functions, so a model
always sees pixels prepared the same way. Images are BGR uint8 as OpenCV reads them; the network
input is float32 NHWC: pixel / image_scale - image_offset, per channel.

Two resize modes (the inference spec's `keep_aspect_ratio_mode`):
- `pad_image_input` (strict): the network input is exactly (H, W); the image is scaled to fit
  and padded at the right/bottom, so the aspect ratio is kept.
- `adjust_network_input`: the image is scaled so its height is H and the width follows the aspect
  ratio, rounded up to a multiple of the stride (padded); needs a backend without a fixed width.
"""

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from bpnet.errors import BpnetError
from bpnet.limits import MAX_SIDE_PX, STRIDE

DEFAULT_IMAGE_SCALE = (256.0, 256.0, 256.0)
DEFAULT_IMAGE_OFFSET = (0.5, 0.5, 0.5)
# Largest image read (pixels): a photo of 50 MP decodes to 150 MB; larger ones are refused from
# their header before decoding (a decompression bomb is a few KB on disk).
MAX_IMAGE_PIXELS = 50_000_000
PAD_VALUE = 128  # grey in uint8 becomes 0.0 after default normalisation


@dataclass(frozen=True)
class Letterbox:
    """How an original image was placed in the network input: x_net = x_img * scale (+ padding
    on the right/bottom only, so no offset)."""
    scale: float
    image_hw: tuple   # original (h, w)
    input_hw: tuple   # network input (H, W)

    def to_image(self, xy):
        """Network-input pixel coordinates -> original image coordinates (same convention)."""
        xy = np.asarray(xy, dtype=np.float32)
        return (xy + 0.5) / self.scale - 0.5

    def to_input(self, xy):
        xy = np.asarray(xy, dtype=np.float32)
        return (xy + 0.5) * self.scale - 0.5


def check_input_hw(input_hw, where="input_shape"):
    """(H, W) must be whole multiples of the stride up to MAX_SIDE_PX; raise a clear error otherwise
    (the one rule for specs, run specs, the dashboard and the CLI)."""
    try:
        h, w = (float(v) for v in input_hw)
    except (TypeError, ValueError):
        raise BpnetError(f"{where}: expected [H, W], got {input_hw!r}") from None
    if not (h.is_integer() and w.is_integer()) or not (STRIDE <= h <= MAX_SIDE_PX and STRIDE <= w <= MAX_SIDE_PX) \
            or h % STRIDE or w % STRIDE:
        raise BpnetError(f"{where}: H and W must be positive multiples of {STRIDE} up to {MAX_SIDE_PX}, got "
                         f"{h:g}x{w:g} (e.g. {_nearest_side(h)}x{_nearest_side(w)})")
    return int(h), int(w)


def _nearest_side(value):
    """The allowed side closest to `value` (for the hint in the error)."""
    return int(max(STRIDE, min(MAX_SIDE_PX, round(value / STRIDE) * STRIDE)))


def read_image(path):
    """BGR uint8 image, or a BpnetError naming the file when it is missing, not decodable, or
    larger than MAX_IMAGE_PIXELS (checked from its header, before anything is decoded)."""
    if not _exists(path):
        raise BpnetError(f"image not found: {path}")
    check_image_size(path)
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise BpnetError(f"image {path} is not a readable image (corrupt or unsupported format)")
    return image


def check_image_size(path):
    """Refuse an image whose header says it has more than MAX_IMAGE_PIXELS: a 20000 x 20000 PNG
    would take 1.2 GB decoded (5 GB at peak). Pillow reads only the header here."""
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # ours is lower
            with Image.open(path) as header:
                width, height = header.size
    except Image.DecompressionBombError as err:   # Pillow's own limit, far above ours
        raise BpnetError(f"image {path} has more than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP allowed "
                         f"({err}); downscale it first") from None
    except (OSError, ValueError, SyntaxError):
        return   # not a format Pillow knows, or a broken header: cv2 decides (and names it)
    if width * height > MAX_IMAGE_PIXELS:
        raise BpnetError(f"image {path} is {width}x{height} pixels ({width * height / 1e6:.0f} MP), more "
                         f"than the {MAX_IMAGE_PIXELS / 1e6:.0f} MP allowed; downscale it first (a pose "
                         "network sees it at a few hundred pixels anyway)")


def _exists(path):
    import os
    return os.path.isfile(path)


def letterbox_image(image, input_hw, mode="pad_image_input"):
    """Resize + pad a BGR image into the network input. Returns (uint8 image, Letterbox)."""
    h, w = image.shape[:2]
    H, W = input_hw
    if mode == "pad_image_input":
        scale = min(H / h, W / w)
        out_h, out_w = H, W
    elif mode == "adjust_network_input":
        scale = H / h
        out_h, out_w = H, int(np.ceil(w * scale / STRIDE) * STRIDE)
    else:
        raise BpnetError(f"keep_aspect_ratio_mode: {mode!r} is not one of pad_image_input, adjust_network_input")
    new_h, new_w = min(out_h, max(1, round(h * scale))), min(out_w, max(1, round(w * scale)))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    canvas = np.full((out_h, out_w, 3), PAD_VALUE, dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, Letterbox(scale=scale, image_hw=(h, w), input_hw=(out_h, out_w))


def normalize(images, image_scale=DEFAULT_IMAGE_SCALE, image_offset=DEFAULT_IMAGE_OFFSET):
    """uint8 (..., H, W, 3) -> float32 network input: pixel / image_scale - image_offset.

    uint8 images go through a 256-entry lookup table per channel (the same float32 arithmetic,
    done once per value instead of once per pixel: bit-identical and several times faster);
    other dtypes are computed directly."""
    images = np.asarray(images)
    if images.dtype == np.uint8 and images.ndim >= 3 and images.shape[-1] == 3 and images.size:
        table = normalization_table(tuple(map(float, image_scale)), tuple(map(float, image_offset)))
        rows = images.reshape(-1, images.shape[-2], 3)   # cv2.LUT takes one (rows, cols, 3) image
        return cv2.LUT(rows, table).reshape(images.shape)
    images = images.astype(np.float32, copy=False)
    return images / np.asarray(image_scale, np.float32) - np.asarray(image_offset, np.float32)


@lru_cache(maxsize=16)
def normalization_table(image_scale, image_offset):
    """(1, 256, 3) float32: the normalised value of every uint8 level per channel."""
    levels = np.arange(256, dtype=np.float32)[:, None]
    table = levels / np.asarray(image_scale, np.float32) - np.asarray(image_offset, np.float32)
    return table[None]


def normalization_for(spec_normalization, card_normalization, where="normalization"):
    """The normalisation to use: the model card's when the model has one, else the spec's.

    An imported network was trained with one preprocessing, written in its model card. A spec
    left at the defaults follows the card; a spec that sets other values that disagree with
    the card is an error rather than silently wrong maps.
    """
    if card_normalization is None:
        return spec_normalization
    given = (tuple(spec_normalization.image_scale), tuple(spec_normalization.image_offset))
    card = (tuple(card_normalization.image_scale), tuple(card_normalization.image_offset))
    if given not in (card, (DEFAULT_IMAGE_SCALE, DEFAULT_IMAGE_OFFSET)):
        raise BpnetError(f"{where}: image_scale {list(given[0])} / image_offset {list(given[1])} "
                         f"disagree with the model card's {list(card[0])} / {list(card[1])}; remove "
                         "normalization from the spec (the card's is used) or set the card's values")
    return card_normalization


def spec_following_card(spec, model_path, where="normalization"):
    """`spec` (anything with a `normalization`, e.g. an InferSpec) with the normalisation the
    model file's card prescribes (`normalization_for`): what every caller that prepares images
    itself (calibration, output comparisons) needs for an imported network."""
    from bpnet.imports.card import model_normalization

    card = model_normalization(model_path)
    if card is None:
        return spec
    return spec.model_copy(update={"normalization": normalization_for(spec.normalization, card, where)})


def prepare_batch(images, input_hw, mode="pad_image_input",
                  image_scale=DEFAULT_IMAGE_SCALE, image_offset=DEFAULT_IMAGE_OFFSET):
    """A list of BGR images -> (float32 (N, H, W, 3) batch, [Letterbox]).

    In adjust mode images of different aspect ratios get different widths; they are padded to the
    widest so they still form one batch.
    """
    boxed = [letterbox_image(img, input_hw, mode) for img in images]
    width = max(b[0].shape[1] for b in boxed)
    batch = np.full((len(boxed), boxed[0][0].shape[0], width, 3), PAD_VALUE, dtype=np.uint8)
    for i, (img, _) in enumerate(boxed):
        batch[i, :, : img.shape[1]] = img
    return normalize(batch, image_scale, image_offset), [b[1] for b in boxed]
