"""Step 1 of decoding: per part, the peaks of its heatmap in input pixels (numpy).

Local maxima of the heatmap (3x3 non-maximum suppression) above a threshold, each refined either
by a Gaussian (log-quadratic) fit on the stride-8 cells or on the map upsampled by a factor
(bicubic, the same weights as cv2.resize INTER_CUBIC), and placed in input pixels by
bpnet.geometry. The Gaussian mode also fits crowded peaks from the side no neighbouring blob
raises and recovers blobs hidden by the 3x3 NMS (`uncrowded_offsets`, `shadowed_peaks`).

Speed: upsampling every channel to the input size costs ~15 ms at 288x384 on one core while the
peaks live in a few dozen places, so NMS runs on the stride-8 map and only a window of +-1 cell
around each candidate is upsampled (`CubicUpsampler`); the result equals cv2.resize of the whole
map followed by an argmax in that window.
"""

import numpy as np

from bpnet.geometry import cells_to_pixels
from bpnet.limits import STRIDE

# More candidates per part than people COCO allows per image (20) only costs time.
MAX_PEAKS_PER_PART = 30
CUBIC_A = -0.75  # OpenCV's bicubic coefficient (INTER_CUBIC), so refinement matches cv2.resize
# log() of heatmap values is taken above this floor (a network may output 0 or slightly negative).
LOG_FLOOR = 1e-6
# A shadowed maximum (see `shadowed_peaks`) must reach this fraction of the diagonal neighbour that
# hides it: a weak shoulder of a strong blob is noise, not a second person.
SHADOWED_MIN_RATIO = 0.5
# Only well-formed, strong maxima tell the blob width used to place shadowed peaks.
REFERENCE_PEAK_MIN = 0.5
# Cells by which the two one-sided centre estimates of a peak may differ before one side counts as
# raised by a neighbouring blob (`uncrowded_offsets`); a network's blobs are not exact Gaussians,
# so small disagreements are left to the symmetric fit (0.3 measured best on the oracle; 0.5 is
# 0.004 AP lower, 0.1-0.2 0.003 lower).
CROWDED_SIDE_DISAGREEMENT = 0.3


def cubic_weights(src_len, factor):
    """(src_len * factor, src_len) matrix that upsamples one axis like cv2.resize INTER_CUBIC.

    Destination sample j sits at source coordinate (j + 0.5) / factor - 0.5 (pixel centres
    aligned, as bpnet.geometry assumes); taps beyond the border repeat the edge sample.
    """
    dst = np.arange(src_len * factor, dtype=np.float64)
    src = (dst + 0.5) / factor - 0.5
    base = np.floor(src).astype(np.int64)
    t = src - base
    weights = np.zeros((dst.size, src_len), dtype=np.float64)
    for offset in (-1, 0, 1, 2):
        w = _cubic_kernel(np.abs(t - offset))
        index = np.clip(base + offset, 0, src_len - 1)
        np.add.at(weights, (np.arange(dst.size), index), w)
    return weights.astype(np.float32)


def _cubic_kernel(d):
    a = CUBIC_A
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


class CubicUpsampler:
    """Bicubic upsampling of small windows of (h, w) maps, cached per map size and factor.

    Every window covers the fine samples whose centres lie within one coarse cell of a candidate
    cell's centre: at most 2 * factor + 1 per axis, samples past that span or past the map's
    edge are masked with -inf.
    """

    _cache = {}
    PAD = 3  # a fine sample within one cell of the centre uses coarse taps at most 3 cells away

    def __init__(self, map_hw, factor_hw):
        key = (tuple(map_hw), tuple(factor_hw))
        if key not in self._cache:
            # Zero columns on both sides let every window slice 7 columns without clipping; the
            # edge-repeat taps are already folded into the real edge columns.
            self._cache[key] = tuple(np.pad(cubic_weights(n, f), ((0, 0), (self.PAD, self.PAD)))
                                     for n, f in zip(map_hw, factor_hw))
        self.rows, self.cols = self._cache[key]
        self.factor_hw = tuple(factor_hw)

    def windows(self, planes, rows, cols, chans):
        """Upsampled windows around cells (rows, cols) of channels `chans` of (h, w, C) `planes`.

        Returns (values (n, K, K) with -inf outside the window, fine rows (n, K), fine cols (n, K)).
        """
        pad = self.PAD
        padded = np.pad(planes, ((pad, pad), (pad, pad), (0, 0)))
        span = np.arange(2 * pad + 1)
        patches = padded[rows[:, None, None] + span[:, None], cols[:, None, None] + span, chans[:, None, None]]
        fine_rows, valid_rows = self._span(rows, self.factor_hw[0], self.rows.shape[0])
        fine_cols, valid_cols = self._span(cols, self.factor_hw[1], self.cols.shape[0])
        weights_y = self.rows[fine_rows[:, :, None], rows[:, None, None] + span]       # (n, K, 7)
        weights_x = self.cols[fine_cols[:, :, None], cols[:, None, None] + span]       # (n, K, 7)
        values = weights_y @ patches @ weights_x.transpose(0, 2, 1)                  # (n, K, K)
        values[~(valid_rows[:, :, None] & valid_cols[:, None, :])] = -np.inf
        return values, fine_rows, fine_cols

    @staticmethod
    def _span(cells, factor, fine_len):
        lo = np.ceil((cells - 0.5) * factor - 0.5).astype(np.int64)
        hi = np.floor((cells + 1.5) * factor - 0.5).astype(np.int64)
        fine = lo[:, None] + np.arange(2 * factor + 1)
        valid = (fine >= 0) & (fine <= hi[:, None]) & (fine < fine_len)
        return np.clip(fine, 0, fine_len - 1), valid


def local_maxima(maps):
    """(h, w, C) -> bool mask of cells equal to the maximum of their 3x3 neighbourhood."""
    padded = np.pad(maps, ((1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    h, w = maps.shape[:2]
    neighbourhood = maps.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(neighbourhood, padded[dy:dy + h, dx:dx + w], out=neighbourhood)
    return maps >= neighbourhood


def find_peaks(heatmaps, num_parts, threshold, factor_hw=(STRIDE, STRIDE), stride=STRIDE,
               max_peaks=MAX_PEAKS_PER_PART, refinement="upsample"):
    """Per part, an (n, 3) float32 array of peaks (x, y, score) in input pixels, best first.

    heatmaps: (h, w, >= num_parts) at `stride`; channels past `num_parts` (background) ignored.
    refinement: "upsample" = argmax + parabola on the map upsampled by `factor_hw` (bicubic);
    "gaussian" = log-quadratic fit on the stride-8 cells (`gaussian_offsets`), falling back to
    "upsample" for peaks that are not blob-shaped.
    """
    parts = np.ascontiguousarray(heatmaps[..., :num_parts], dtype=np.float32)
    rows, cols, chans = np.nonzero(local_maxima(parts) & (parts > threshold))
    coarse = parts[rows, cols, chans]
    keep = strongest_per_channel(chans, coarse, max_peaks)
    rows, cols, chans, coarse = rows[keep], cols[keep], chans[keep], coarse[keep]
    empty = np.zeros((0, 3), np.float32)
    if len(rows) == 0:
        return [empty] * num_parts
    found = np.zeros((len(rows), 3), np.float32)
    fitted = np.zeros(len(rows), dtype=bool)
    if refinement == "gaussian":
        dx, dy, height, fitted = gaussian_offsets(parts, rows, cols, chans)
        strong = coarse > REFERENCE_PEAK_MIN
        curvature = reference_curvature(parts, rows[strong], cols[strong], chans[strong])
        dx, dy = uncrowded_offsets(parts, rows, cols, chans, dx, dy, curvature)
        # The fitted top, never below the sampled maximum nor above the 1.0 of a target's peak.
        score = np.clip(height, coarse, np.maximum(coarse, 1.0))
        found[fitted] = np.stack([cells_to_pixels(cols + dx, stride), cells_to_pixels(rows + dy, stride),
                                  score], axis=1)[fitted]
    elif refinement != "upsample":
        raise ValueError(f"refinement must be 'upsample' or 'gaussian', got {refinement!r}")
    if not fitted.all():
        rest = ~fitted
        found[rest] = upsampled_peaks(parts, rows[rest], cols[rest], chans[rest], coarse[rest], factor_hw, stride)
    peaks = [_drop_duplicates(found[chans == p], stride) if np.any(chans == p) else empty
             for p in range(num_parts)]
    if refinement == "gaussian":
        # Not deduplicated against the 3x3 maxima: a shadowed blob is by construction another
        # blob, often closer than one cell's width to the one that hides it.
        shadowed, shadowed_chans = shadowed_peaks(parts, threshold, stride, curvature)
        # Still at most `max_peaks` per part: on a noisy map ridges make many shadowed cells.
        peaks = [_best_first(np.concatenate([peaks[p], shadowed[shadowed_chans == p]]))[:max_peaks]
                 if np.any(shadowed_chans == p) else peaks[p] for p in range(num_parts)]
    return peaks


def uncrowded_offsets(parts, rows, cols, chans, dx, dy, curvature):
    """Gaussian-fit offsets (dx, dy) of 3x3 maxima, corrected where a neighbouring blob of the
    same part raises one side: per axis, the centre seen from the left and from the right
    neighbour (each alone, with the image's blob curvature) agree for a lone blob; where they
    differ by more than CROWDED_SIDE_DISAGREEMENT cells, the side whose next sample continues the
    curvature is believed (the maps are a max of blobs, so the other side is the raised one)."""
    if curvature is None:
        return dx, dy
    padded = np.pad(parts, ((2, 2), (2, 2), (0, 0)))
    logs = lambda oy, ox: np.log(np.maximum(padded[rows + 2 + oy, cols + 2 + ox, chans], LOG_FLOOR))  # noqa: E731
    centre = logs(0, 0)
    out = []
    for d, (a2, a1, t1, t2) in ((dx, [logs(0, -2), logs(0, -1), logs(0, 1), logs(0, 2)]),
                                (dy, [logs(-2, 0), logs(-1, 0), logs(1, 0), logs(2, 0)])):
        from_away = (a1 - centre) / curvature - 0.5
        from_toward = 0.5 - (t1 - centre) / curvature
        sided = _one_sided_offset([a2, a1], centre, [t1, t2], curvature)
        crowded = np.abs(from_away - from_toward) > CROWDED_SIDE_DISAGREEMENT
        out.append(np.where(crowded, np.clip(sided, -1, 1), d))
    return out[0], out[1]


def _best_first(peaks):
    return peaks[np.argsort(-peaks[:, 2], kind="stable")]


def shadowed_peaks(parts, threshold, stride, curvature):
    """Peaks of blobs hidden by 3x3 NMS: the same part of two people < ~1.5 cells apart on a
    diagonal leaves a single 3x3 maximum. Such a second blob shows as a cell above `threshold`
    that beats its four side neighbours but not a diagonal one; one isotropic blob never makes
    such a cell (its side neighbours towards the centre are always higher). Returns ((n, 3) peaks
    (x, y, cell value) in input pixels, (n,) channels).

    Placement: per axis, the log of a Gaussian falls off from the cell to each side neighbour
    by a known curvature, the image's typical blob curvature (`reference_curvature`), so one side
    alone gives the centre. Of the two sides the one whose next sample continues that curvature
    is taken: the other is raised by the neighbouring blob (the maps are a max of blobs).
    """
    empty = np.zeros((0, 3), np.float32), np.zeros(0, dtype=np.int64)
    if curvature is None:
        return empty
    h, w = parts.shape[:2]
    padded = np.pad(parts, ((2, 2), (2, 2), (0, 0)))
    shifted = lambda dy, dx: padded[2 + dy:2 + dy + h, 2 + dx:2 + dx + w]  # noqa: E731
    # Pairwise maxima of shifted views: a reduction over a stacked axis of 4 is ~10x slower.
    sides = np.maximum(np.maximum(shifted(0, 1), shifted(0, -1)), np.maximum(shifted(1, 0), shifted(-1, 0)))
    strongest = np.maximum(np.maximum(shifted(-1, -1), shifted(-1, 1)), np.maximum(shifted(1, -1), shifted(1, 1)))
    rows, cols, chans = np.nonzero((parts > threshold) & (parts > sides) & (strongest > parts)
                                   & (parts >= SHADOWED_MIN_RATIO * strongest))
    if len(rows) == 0:
        return empty
    # The direction of the hiding blob: its side of the cell is the suspect one.
    diagonals = np.stack([padded[rows + 2 + dy, cols + 2 + dx, chans] for dy, dx in DIAGONALS], axis=1)
    sy, sx = DIAGONALS[diagonals.argmax(axis=1)].T
    logs = lambda dy, dx: np.log(np.maximum(padded[rows + 2 + dy, cols + 2 + dx, chans], LOG_FLOOR))  # noqa: E731
    centre = logs(0, 0)
    dx = sx * _one_sided_offset([logs(0, -2 * sx), logs(0, -sx)], centre, [logs(0, sx), logs(0, 2 * sx)], curvature)
    dy = sy * _one_sided_offset([logs(-2 * sy, 0), logs(-sy, 0)], centre, [logs(sy, 0), logs(2 * sy, 0)], curvature)
    ok = (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
    peaks = np.stack([cells_to_pixels(cols + dx, stride), cells_to_pixels(rows + dy, stride),
                      parts[rows, cols, chans]], axis=1).astype(np.float32)
    return peaks[ok], chans[ok]


DIAGONALS = np.array([(-1, -1), (-1, 1), (1, -1), (1, 1)])


def _one_sided_offset(away, centre, toward, curvature):
    """Blob centre along one axis, in cells towards the hiding blob, from the side away from it
    (log samples 2 and 1 cells away) or the side towards it, whichever continues `curvature`."""
    from_away = (away[1] - centre) / curvature - 0.5
    from_toward = 0.5 - (toward[0] - centre) / curvature
    bend_away = away[0] - 2 * away[1] + centre
    bend_toward = toward[1] - 2 * toward[0] + centre
    use_toward = np.abs(bend_toward - curvature) < np.abs(bend_away - curvature)
    return np.where(use_toward, from_toward, from_away)


def reference_curvature(parts, rows, cols, chans):
    """Median second difference of log(map) at the strong 3x3 maxima (rows, cols, chans), both
    axes: the typical blob width of these maps (a target's sigma, or what the network learned);
    None when no maximum is strong enough to tell."""
    padded = np.pad(parts, ((1, 1), (1, 1), (0, 0)), constant_values=np.nan)
    with np.errstate(invalid="ignore"):
        logs = lambda dy, dx: np.log(np.maximum(padded[rows + 1 + dy, cols + 1 + dx, chans], LOG_FLOOR))  # noqa: E731
        bends = np.concatenate([logs(0, -1) + logs(0, 1) - 2 * logs(0, 0), logs(-1, 0) + logs(1, 0) - 2 * logs(0, 0)])
    bends = bends[np.isfinite(bends) & (bends < 0)]
    return float(np.median(bends)) if len(bends) else None


def upsampled_peaks(parts, rows, cols, chans, coarse, factor_hw, stride):
    """(n, 3) peaks (x, y, score): argmax of the bicubic window around each cell + parabola offset."""
    values, fine_rows, fine_cols = CubicUpsampler(parts.shape[:2], factor_hw).windows(parts, rows, cols, chans)
    n, k, _ = values.shape
    iy, ix = np.unravel_index(values.reshape(n, -1).argmax(axis=1), (k, k))
    at = np.arange(n)
    dy = parabola_offsets(values[at, :, ix], iy)
    dx = parabola_offsets(values[at, iy, :], ix)
    return np.stack([cells_to_pixels(fine_cols[at, ix] + dx, stride / factor_hw[1]),
                     cells_to_pixels(fine_rows[at, iy] + dy, stride / factor_hw[0]),
                     np.maximum(values[at, iy, ix], coarse)], axis=1).astype(np.float32)


def gaussian_offsets(parts, rows, cols, chans):
    """Sub-cell peak positions from a quadratic fit of log(heatmap) around cells (rows, cols).

    The log of a Gaussian blob is a quadratic, so Newton's step from the cell, -H^-1 g with the
    gradient g and Hessian H of log(map) from the 3x3 neighbourhood, lands on its centre exactly
    (the distribution-aware refinement of DARK, Zhang et al. 2020). At a map edge the missing
    second derivative is taken from the other axis (blobs are isotropic) and the gradient is
    one-sided. Returns (dx, dy, fitted height, ok); ok is False where the neighbourhood is not
    blob-shaped (Hessian not negative definite, or the centre more than one cell away).
    """
    padded = np.pad(parts, ((1, 1), (1, 1), (0, 0)), constant_values=np.nan)   # NaN = off the map
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        # A neighbour at or below the floor (0 outside a blob) gives log -inf: no fit there.
        logs = np.log(np.where(padded > LOG_FLOOR, padded, np.where(np.isnan(padded), np.nan, 0.0)))
        at = lambda dy, dx: logs[rows + 1 + dy, cols + 1 + dx, chans]  # noqa: E731
        centre = at(0, 0)
        left, right, up, down = at(0, -1), at(0, 1), at(-1, 0), at(1, 0)
        dxx, dyy = left - 2 * centre + right, up - 2 * centre + down
        dxx, dyy = np.where(np.isnan(dxx), dyy, dxx), np.where(np.isnan(dyy), dxx, dyy)
        gx = _one_sided_gradient(left, centre, right, dxx)
        gy = _one_sided_gradient(up, centre, down, dyy)
        dxy = (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1)) / 4.0
        off_map = np.isnan(at(1, 1)) | np.isnan(at(1, -1)) | np.isnan(at(-1, 1)) | np.isnan(at(-1, -1))
        dxy = np.where(off_map, 0.0, dxy)                  # at an edge the blob is taken as axis-aligned
        det = dxx * dyy - dxy * dxy
        dx = -(dyy * gx - dxy * gy) / det
        dy = -(dxx * gy - dxy * gx) / det
        ok = np.isfinite(dx) & np.isfinite(dy) & np.isfinite(det) & (dxx < 0) & (det > 0) \
            & (np.abs(dx) <= 1) & (np.abs(dy) <= 1)
        dx, dy = np.where(ok, dx, 0.0), np.where(ok, dy, 0.0)
        height = np.exp(centre + 0.5 * (np.where(ok, gx, 0.0) * dx + np.where(ok, gy, 0.0) * dy))
    return dx, dy, np.where(ok, height, 0.0), ok


def _one_sided_gradient(before, centre, after, second):
    """d/dt of a quadratic at the centre sample; one-sided (corrected by the curvature) at an edge."""
    central = (after - before) / 2.0
    forward = (after - centre) - second / 2.0
    backward = (centre - before) + second / 2.0
    return np.where(np.isnan(before), forward, np.where(np.isnan(after), backward, central))


def strongest_per_channel(chans, values, limit):
    """Indices of at most `limit` highest values per channel."""
    order = np.lexsort((-values, chans))
    first = np.searchsorted(chans[order], chans[order], side="left")
    return order[np.arange(len(order)) - first < limit]


def parabola_offsets(lines, index):
    """Sub-cell offsets in [-0.5, 0.5] of the maxima lines[i, index[i]] from a parabola through
    their neighbours; 0 at a window's edge, next to a masked sample or on a flat top."""
    n, k = lines.shape
    at = np.arange(n)
    inner = (index > 0) & (index < k - 1)
    left = lines[at, np.clip(index - 1, 0, k - 1)]
    centre = lines[at, index]
    right = lines[at, np.clip(index + 1, 0, k - 1)]
    curvature = left - 2 * centre + right
    usable = inner & np.isfinite(curvature) & (curvature < 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.where(usable, 0.5 * (left - right) / np.where(usable, curvature, -1.0), 0.0)
    return np.clip(offset, -0.5, 0.5)


def _drop_duplicates(peaks, min_dist_px):
    """Drop peaks closer than `min_dist_px` to a better one (plateaus give twin maxima)."""
    if len(peaks) < 2:
        return peaks
    peaks = peaks[np.argsort(-peaks[:, 2], kind="stable")]
    dist = np.linalg.norm(peaks[:, None, :2] - peaks[None, :, :2], axis=-1)
    keep = np.ones(len(peaks), dtype=bool)
    for i in range(len(peaks)):
        if keep[i]:
            keep[i + 1:] &= dist[i, i + 1:] >= min_dist_px
    return peaks[keep]
