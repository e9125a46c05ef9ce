"""Training targets at the output stride: Gaussian part heatmaps, background, part affinity fields.

Pure numpy, no I/O. Every map is evaluated at the cell centres of `bpnet.geometry` (cell (row, col)
has its centre at ((col + 0.5) * cell_px - 0.5, (row + 0.5) * cell_px - 0.5) input pixels), the
same convention the decoder uses to map peaks back, so encode -> decode is exact up to a cell.

`parts` arrays are (num_people, P, 3) rows of (x, y, v) in network-input pixels; v > 0 means the
part is labelled. A labelled part outside the input still counts: its Gaussian tail or its limb
band may reach into the map, which is what the network sees at the border of a crop.
"""

import numpy as np

from bpnet.geometry import cell_centers

# Gaussian values below this are set to zero so far-away cells are exactly background.
HEATMAP_FLOOR = 1e-3


def grid_points(grid_hw, cell_px):
    """(x, y) input-pixel coordinates of every cell centre: two (h, w) arrays."""
    h, w = grid_hw
    ys, xs = cell_centers(h, cell_px), cell_centers(w, cell_px)
    return np.meshgrid(xs, ys)  # each (h, w)


def labelled(parts):
    """(num_people, P) bool: which parts carry a label."""
    return parts[..., 2] > 0


def make_heatmaps(parts, grid_hw, cell_px, sigma_px):
    """(h, w, P + 1) float32: per part the max over people of a Gaussian of `sigma_px` input
    pixels centred on the keypoint (1.0 at a keypoint lying on a cell centre); the last channel is
    the background, 1 - max over parts, clipped to [0, 1]."""
    parts = _as_parts(parts)
    h, w = grid_hw
    num_parts = parts.shape[1]
    xs, ys = cell_centers(w, cell_px), cell_centers(h, cell_px)
    heatmaps = np.zeros((h, w, num_parts + 1), dtype=np.float32)
    inv_two_sigma_sq = 1.0 / (2.0 * sigma_px * sigma_px)
    for person, part in zip(*np.nonzero(labelled(parts))):
        x, y = parts[person, part, :2]
        # A 2-D isotropic Gaussian is the outer product of two 1-D ones: h + w exps, not h * w.
        blob = np.outer(np.exp(-(ys - y) ** 2 * inv_two_sigma_sq), np.exp(-(xs - x) ** 2 * inv_two_sigma_sq))
        np.maximum(heatmaps[..., part], blob, out=heatmaps[..., part])
    heatmaps[..., :num_parts][heatmaps[..., :num_parts] < HEATMAP_FLOOR] = 0.0
    heatmaps[..., num_parts] = background(heatmaps[..., :num_parts])
    return heatmaps


def background(part_heatmaps):
    """(h, w, P) -> (h, w): where no part is, 1 - max(parts) clipped to [0, 1]."""
    if part_heatmaps.shape[-1] == 0:
        return np.ones(part_heatmaps.shape[:2], dtype=np.float32)
    return np.clip(1.0 - part_heatmaps.max(axis=-1), 0.0, 1.0)


def limb_band(start, end, xs, ys, width_px):
    """Cells (bool (h, w)) within `width_px` of the segment start-end, and its unit vector.

    None when the segment has zero length (no direction to encode)."""
    direction = np.asarray(end, np.float64) - np.asarray(start, np.float64)
    length = float(np.hypot(*direction))
    if length < 1e-6:
        return None, None
    unit = direction / length
    dx, dy = xs - start[0], ys - start[1]
    along = np.clip(dx * unit[0] + dy * unit[1], 0.0, length)
    # Distance from each cell centre to the nearest point of the segment (a capsule-shaped band).
    dist = np.hypot(dx - along * unit[0], dy - along * unit[1])
    return dist <= width_px, unit.astype(np.float32)


def make_pafs(parts, limbs, grid_hw, cell_px, width_px):
    """(h, w, 2L) float32: for limb i, channels (2i, 2i+1) hold the (x, y) unit vector from part
    limbs[i][0] to part limbs[i][1] at cells within `width_px` input pixels of the segment;
    where several people's same limb overlap the vectors are averaged; zero elsewhere."""
    parts = _as_parts(parts)
    h, w = grid_hw
    xs, ys = grid_points(grid_hw, cell_px)
    pafs = np.zeros((h, w, 2 * len(limbs)), dtype=np.float32)
    is_labelled = labelled(parts)
    for limb, (a, b) in enumerate(limbs):
        summed = np.zeros((h, w, 2), dtype=np.float32)
        count = np.zeros((h, w), dtype=np.float32)
        for person in np.nonzero(is_labelled[:, a] & is_labelled[:, b])[0]:
            band, unit = limb_band(parts[person, a, :2], parts[person, b, :2], xs, ys, width_px)
            if band is None:
                continue
            summed[band] += unit
            count[band] += 1
        covered = count > 0
        summed[covered] /= count[covered][:, None]
        pafs[..., 2 * limb:2 * limb + 2] = summed
    return pafs


def make_targets(parts, skeleton, input_hw, target_spec, stride=8):
    """(heatmaps (H/s, W/s, P+1), pafs (H/s, W/s, 2L)) for people `parts` in input pixels."""
    grid_hw = (input_hw[0] // stride, input_hw[1] // stride)
    parts = _as_parts(parts, skeleton.num_parts)
    heatmaps = make_heatmaps(parts, grid_hw, stride, target_spec.heatmap_sigma_px)
    pafs = make_pafs(parts, skeleton.limbs, grid_hw, stride, target_spec.paf_width_px)
    return heatmaps, pafs


def _as_parts(parts, num_parts=None):
    """Accept an empty list / (0,) array for 'no people'; always return (N, P, 3) float32."""
    parts = np.asarray(parts, dtype=np.float32)
    if parts.size == 0 and num_parts is not None:
        return np.zeros((0, num_parts, 3), dtype=np.float32)
    if parts.ndim != 3 or parts.shape[-1] != 3:
        raise ValueError(f"parts must have shape (num_people, num_parts, 3), got {parts.shape}")
    return parts
