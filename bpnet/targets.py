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


def labelled(parts):
    """(num_people, P) bool: which parts carry a label."""
    return parts[..., 2] > 0


def make_heatmaps(parts, grid_hw, cell_px, sigma_px):
    """(h, w, P + 1) float32: per part the max over people of a Gaussian of `sigma_px` input
    pixels centred on the keypoint (1.0 at a keypoint lying on a cell centre); the last channel is
    the background, 1 - max over parts, clipped to [0, 1].

    All labelled keypoints at once: a 2-D isotropic Gaussian is the outer product of two 1-D ones
    (h + w exps per keypoint, not h * w); keypoints are grouped by part and each group's maximum
    taken in one reduction (a maximum does not depend on order, so the result is exact)."""
    parts = _as_parts(parts)
    h, w = grid_hw
    num_parts = parts.shape[1]
    xs, ys = cell_centers(w, cell_px), cell_centers(h, cell_px)
    inv_two_sigma_sq = 1.0 / (2.0 * sigma_px * sigma_px)
    part_ids, people = np.nonzero(labelled(parts).T)        # sorted by part
    x, y = parts[people, part_ids, 0], parts[people, part_ids, 1]
    gauss_y = np.exp(-(ys[None, :] - y[:, None]) ** 2 * inv_two_sigma_sq)     # (K, h)
    gauss_x = np.exp(-(xs[None, :] - x[:, None]) ** 2 * inv_two_sigma_sq)     # (K, w)
    heatmaps = np.zeros((h, w, num_parts + 1), dtype=np.float32)
    if len(part_ids):
        groups, first = np.unique(part_ids, return_index=True)
        blobs = gauss_y[:, :, None] * gauss_x[:, None, :]
        heatmaps[..., groups] = np.maximum.reduceat(blobs, first, axis=0).transpose(1, 2, 0)
    heatmaps[..., :num_parts][heatmaps[..., :num_parts] < HEATMAP_FLOOR] = 0.0
    heatmaps[..., num_parts] = background(heatmaps[..., :num_parts])
    return heatmaps


def background(part_heatmaps):
    """(h, w, P) -> (h, w): where no part is, 1 - max(parts) clipped to [0, 1]."""
    if part_heatmaps.shape[-1] == 0:
        return np.ones(part_heatmaps.shape[:2], dtype=np.float32)
    return np.clip(1.0 - part_heatmaps.max(axis=-1), 0.0, 1.0)


def segment_windows(starts, ends, grid_hw, cell_px, width_px):
    """Row and column indices ((K, BH), (K, BW), clipped into the grid) of a window around each
    of K segments that holds every cell within `width_px` of it, plus masks of the indices that
    are really inside that segment's window (windows share the largest size so they stack)."""
    h, w = grid_hw
    margin = width_px + cell_px   # one cell of slack: a band edge exactly on a cell centre is kept
    low = np.minimum(starts, ends).astype(np.float64) - margin
    high = np.maximum(starts, ends).astype(np.float64) + margin
    first = np.floor((low + 0.5) / cell_px - 0.5).astype(np.int64)
    last = np.ceil((high + 0.5) / cell_px - 0.5).astype(np.int64)
    first = np.maximum(first, 0)
    last = np.minimum(last, [w - 1, h - 1])
    size = np.maximum(last - first + 1, 0)
    steps_x, steps_y = np.arange(max(1, size[:, 0].max())), np.arange(max(1, size[:, 1].max()))
    cols, rows = first[:, 0, None] + steps_x, first[:, 1, None] + steps_y
    col_ok, row_ok = steps_x < size[:, 0, None], steps_y < size[:, 1, None]
    return np.minimum(rows, h - 1), np.minimum(cols, w - 1), row_ok, col_ok


def limb_bands(starts, ends, grid_hw, cell_px, width_px):
    """Cells within `width_px` input pixels of each of K segments (starts, ends: (K, 2) float32
    input pixels; a capsule-shaped band), as (segment index, row, col) arrays in segment order,
    and the segments' unit vectors ((K, 2) float32). Zero-length segments have no direction to
    encode: they light no cell. Distances are float64; only a window around each segment is
    evaluated (cells outside it are farther than `width_px` by construction)."""
    starts, ends = np.asarray(starts, np.float32), np.asarray(ends, np.float32)
    direction = ends.astype(np.float64) - starts.astype(np.float64)
    length = np.hypot(direction[:, 0], direction[:, 1])
    has_length = length >= 1e-6
    unit = direction / np.where(has_length, length, 1.0)[:, None]
    rows, cols, row_ok, col_ok = segment_windows(starts, ends, grid_hw, cell_px, width_px)
    xs, ys = cell_centers(grid_hw[1], cell_px)[cols], cell_centers(grid_hw[0], cell_px)[rows]
    ux, uy, span = (v[:, None, None] for v in (unit[:, 0], unit[:, 1], length))
    dx = xs[:, None, :] - starts[:, 0, None, None]     # (K, BH, BW), float32 like the cell centres
    dy = ys[:, :, None] - starts[:, 1, None, None]
    along = np.clip(dx * ux + dy * uy, 0.0, span)
    # Distance from each cell centre to the nearest point of the segment.
    dist = np.hypot(dx - along * ux, dy - along * uy)
    inside = (dist <= width_px) & row_ok[:, :, None] & col_ok[:, None, :] & has_length[:, None, None]
    segment, r, c = np.nonzero(inside)
    return (segment, rows[segment, r], cols[segment, c]), unit.astype(np.float32)


def make_pafs(parts, limbs, grid_hw, cell_px, width_px):
    """(h, w, 2L) float32: for limb i, channels (2i, 2i+1) hold the (x, y) unit vector from part
    limbs[i][0] to part limbs[i][1] at cells within `width_px` input pixels of the segment;
    where several people's same limb overlap the vectors are averaged; zero elsewhere.

    Every (person, limb) band at once; the vectors are added with an unbuffered scatter in
    person order, so each cell sums exactly the float32 values a loop over people would."""
    parts = _as_parts(parts)
    h, w = grid_hw
    limbs = np.asarray(limbs, dtype=np.int64).reshape(-1, 2)
    summed = np.zeros((len(limbs) * h * w, 2), dtype=np.float32)
    count = np.zeros(len(limbs) * h * w, dtype=np.float32)
    is_labelled = labelled(parts)
    people, limb_ids = np.nonzero(is_labelled[:, limbs[:, 0]] & is_labelled[:, limbs[:, 1]])  # person-major
    if len(people):
        starts, ends = parts[people, limbs[limb_ids, 0], :2], parts[people, limbs[limb_ids, 1], :2]
        (segment, rows, cols), units = limb_bands(starts, ends, grid_hw, cell_px, width_px)
        cells = (limb_ids[segment] * h + rows) * w + cols
        np.add.at(summed, cells, units[segment])
        count += np.bincount(cells, minlength=count.size).astype(np.float32)
    covered = count > 0
    summed[covered] /= count[covered][:, None]
    return np.ascontiguousarray(summed.reshape(len(limbs), h, w, 2).transpose(1, 2, 0, 3).reshape(h, w, 2 * len(limbs)))


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
