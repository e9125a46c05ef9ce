"""Heatmaps + part-affinity fields -> people. Pure numpy / OpenCV, no TensorFlow.

Steps (OpenPose-style bottom-up decoding):
1. `find_peaks`: per part, local maxima of the heatmap (3x3 non-maximum suppression) above
   `heatmap_threshold`, each refined on the map upsampled by `output_upsampling_factor` (bicubic,
   the same weights as cv2.resize INTER_CUBIC) and placed in input pixels by bpnet.geometry.
2. `score_limbs`: for every candidate pair of a limb, the line integral of the PAF along the
   segment: `paf_num_samples` samples, dot product with the segment's unit vector, a pair is valid
   when at least `paf_min_positive_fraction` of the samples exceed `paf_threshold` and the mean
   score, with a prior against limbs longer than half the input height, is positive.
3. `match_limb`: greedy bipartite matching per limb, best score first, each peak used once.
4. `assemble_people`: connections grow people across limbs; two people sharing a part with no
   conflicting part are merged. People with < `min_parts` parts or a mean score below
   `min_person_score` are dropped.
5. `person_to_coco`: 18 parts -> COCO's 17 keypoints in original image coordinates.

Speed: upsampling all 57 channels to the input size and filtering them costs ~15 ms at 288x384 on
one core, while the peaks live in a few dozen places. So NMS runs on the stride-8 map and only a
window of +-1 cell around each candidate is upsampled (`CubicUpsampler`); the result equals
cv2.resize of the whole map followed by an argmax in that window. PAFs are sampled bilinearly from
the stride-8 maps (exactly what a linear upsampling would give) instead of being resized.
"""

from dataclasses import dataclass

import numpy as np

from bpnet.geometry import cells_to_pixels, pixels_to_cells
from bpnet.preprocess import STRIDE

# More candidates per part than people COCO allows per image (20) only costs time.
MAX_PEAKS_PER_PART = 30
CUBIC_A = -0.75  # OpenCV's bicubic coefficient (INTER_CUBIC), so refinement matches cv2.resize


@dataclass
class Person:
    """One decoded person, in network-input pixels.

    keypoints: (P, 3) rows of (x, y, peak score) in skeleton part order; missing parts are 0.
    found:     (P,) bool, which parts were detected.
    score:     person confidence in [0, 1] used to rank detections (COCO's `score`).
    """
    keypoints: np.ndarray
    found: np.ndarray
    score: float

    @property
    def num_parts(self):
        return int(self.found.sum())


# ---------------------------------------------------------------- peaks

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
    """Bicubic upsampling of small windows of a (h, w) map, cached per map size and factor."""

    _cache = {}

    def __init__(self, map_hw, factor_hw):
        key = (tuple(map_hw), tuple(factor_hw))
        if key not in self._cache:
            self._cache[key] = (cubic_weights(map_hw[0], factor_hw[0]),
                                cubic_weights(map_hw[1], factor_hw[1]))
        self.rows, self.cols = self._cache[key]
        self.factor_hw = factor_hw

    def window(self, plane, row, col):
        """The upsampled map over coarse cells row-1..row+1, col-1..col+1.

        Returns (values (ny, nx), fine row indices (ny,), fine col indices (nx,)).
        """
        fy, fx = self.factor_hw
        fine_rows = _fine_span(row, fy, self.rows.shape[0])
        fine_cols = _fine_span(col, fx, self.cols.shape[0])
        # Each fine sample uses coarse taps within 2 cells, so rows/cols +-3 cover the window.
        r0, r1 = max(row - 3, 0), min(row + 4, plane.shape[0])
        c0, c1 = max(col - 3, 0), min(col + 4, plane.shape[1])
        values = self.rows[fine_rows, r0:r1] @ plane[r0:r1, c0:c1] @ self.cols[fine_cols, c0:c1].T
        return values, fine_rows, fine_cols


def _fine_span(cell, factor, fine_len):
    """Fine indices whose centres lie within one coarse cell of `cell`'s centre."""
    lo = int(np.ceil((cell - 1 + 0.5) * factor - 0.5))
    hi = int(np.floor((cell + 1 + 0.5) * factor - 0.5))
    return np.arange(max(lo, 0), min(hi, fine_len - 1) + 1)


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
               max_peaks=MAX_PEAKS_PER_PART):
    """Per part, an (n, 3) float32 array of peaks (x, y, score) in input pixels, best first.

    heatmaps: (h, w, >= num_parts) at `stride`; channels past `num_parts` (background) ignored.
    """
    parts = np.ascontiguousarray(heatmaps[..., :num_parts], dtype=np.float32)
    candidates = local_maxima(parts) & (parts > threshold)
    upsampler = CubicUpsampler(parts.shape[:2], factor_hw)
    cell_y, cell_x = stride / factor_hw[0], stride / factor_hw[1]
    rows, cols, chans = np.nonzero(candidates)
    peaks = []
    for p in range(num_parts):
        mine = chans == p
        r, c = rows[mine], cols[mine]
        order = np.argsort(-parts[r, c, p])[:max_peaks]
        found = []
        for row, col in zip(r[order], c[order]):
            values, fine_rows, fine_cols = upsampler.window(parts[:, :, p], row, col)
            iy, ix = np.unravel_index(np.argmax(values), values.shape)
            dy, dx = parabola_offset(values[:, ix], iy), parabola_offset(values[iy], ix)
            found.append((cells_to_pixels(fine_cols[ix] + dx, cell_x),
                          cells_to_pixels(fine_rows[iy] + dy, cell_y),
                          max(values[iy, ix], parts[row, col, p])))
        peaks.append(_drop_duplicates(np.asarray(found, dtype=np.float32).reshape(-1, 3), stride))
    return peaks


def parabola_offset(line, i):
    """Sub-cell offset in [-0.5, 0.5] of the maximum at `line[i]`, from a parabola through its
    neighbours; 0 at the window's edge or on a flat top."""
    if i == 0 or i == len(line) - 1:
        return 0.0
    left, centre, right = line[i - 1], line[i], line[i + 1]
    curvature = left - 2 * centre + right
    if curvature >= 0:
        return 0.0
    return float(np.clip(0.5 * (left - right) / curvature, -0.5, 0.5))


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


# ---------------------------------------------------------------- limbs

def sample_bilinear(plane, x_cells, y_cells):
    """Bilinear samples of (h, w, C) `plane` at fractional cell coordinates (any shape)."""
    h, w = plane.shape[:2]
    x = np.clip(x_cells, 0, w - 1)
    y = np.clip(y_cells, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros_like(x, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros_like(y, np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    tx, ty = (x - x0)[..., None], (y - y0)[..., None]
    top = plane[y0, x0] * (1 - tx) + plane[y0, x1] * tx
    bottom = plane[y1, x0] * (1 - tx) + plane[y1, x1] * tx
    return top * (1 - ty) + bottom * ty


def score_limbs(peaks_a, peaks_b, paf_xy, input_h, num_samples, paf_threshold,
                min_positive_fraction, stride=STRIDE):
    """PAF line-integral scores of every (a, b) candidate pair of one limb.

    peaks_a (na, 3), peaks_b (nb, 3) in input pixels; paf_xy (h, w, 2) the limb's field at `stride`.
    Returns (na, nb) float32 scores with -inf where the pair is not a plausible limb.
    """
    na, nb = len(peaks_a), len(peaks_b)
    if na == 0 or nb == 0:
        return np.full((na, nb), -np.inf, dtype=np.float32)
    start = peaks_a[:, None, :2]                                  # (na, 1, 2)
    vec = peaks_b[None, :, :2] - start                            # (na, nb, 2)
    length = np.linalg.norm(vec, axis=-1)                         # (na, nb)
    unit = vec / np.maximum(length, 1e-6)[..., None]
    t = np.linspace(0.0, 1.0, num_samples, dtype=np.float32)
    points = start[:, :, None, :] + vec[:, :, None, :] * t[:, None]   # (na, nb, S, 2)
    field = sample_bilinear(paf_xy, pixels_to_cells(points[..., 0], stride),
                            pixels_to_cells(points[..., 1], stride))  # (na, nb, S, 2)
    along = np.einsum("abse,abe->abs", field, unit)               # (na, nb, S)
    positive = (along > paf_threshold).mean(axis=-1)
    # Long limbs cross other people's fields more easily; OpenPose's prior penalises any limb
    # longer than half the input height.
    prior = np.minimum(0.5 * input_h / np.maximum(length, 1e-6) - 1.0, 0.0)
    score = along.mean(axis=-1) + prior
    valid = (positive >= min_positive_fraction) & (score > 0) & (length > 0)
    return np.where(valid, score, -np.inf).astype(np.float32)


def match_limb(scores):
    """Greedy bipartite matching: best pair first, each candidate used at most once.

    scores (na, nb) with -inf for invalid pairs -> list of (i, j, score).
    """
    ia, ib = np.nonzero(np.isfinite(scores))
    order = np.argsort(-scores[ia, ib], kind="stable")
    used_a, used_b, pairs = set(), set(), []
    for i, j in zip(ia[order], ib[order]):
        if i not in used_a and j not in used_b:
            used_a.add(i)
            used_b.add(j)
            pairs.append((int(i), int(j), float(scores[i, j])))
    return pairs


# ---------------------------------------------------------------- people

def assemble_people(peaks, connections, limbs, num_parts):
    """Group limb connections into people.

    peaks: per part (n, 3) arrays; connections: per limb list of (i, j, score) indices into
    peaks[limb_a], peaks[limb_b]. Returns (people (M, P) int peak index per part or -1,
    scores (M,) sum of peak and connection scores).
    """
    members, totals = [], []
    for (part_a, part_b), pairs in zip(limbs, connections):
        for i, j, score in pairs:
            owners = [k for k, m in enumerate(members) if m[part_a] == i or m[part_b] == j]
            if len(owners) == 2 and not _overlap(members[owners[0]], members[owners[1]]):
                keep, gone = owners
                members[keep] = np.maximum(members[keep], members[gone])
                totals[keep] += totals[gone] + score
                del members[gone], totals[gone]
            elif owners:
                person = members[owners[0]]
                gained = _attach(person, peaks, part_a, i) + _attach(person, peaks, part_b, j)
                joined = person[part_a] == i and person[part_b] == j
                totals[owners[0]] += gained + (score if joined else 0.0)
            else:
                person = np.full(num_parts, -1, dtype=np.int64)
                person[part_a], person[part_b] = i, j
                members.append(person)
                totals.append(peaks[part_a][i, 2] + peaks[part_b][j, 2] + score)
    add_unconnected_peaks(members, totals, peaks, num_parts)
    if not members:
        return np.zeros((0, num_parts), dtype=np.int64), np.zeros(0, dtype=np.float32)
    return np.stack(members), np.asarray(totals, dtype=np.float32)


def add_unconnected_peaks(members, totals, peaks, num_parts):
    """Every peak no limb connected becomes a one-part person (kept only if min_parts is 1).

    A person whose only visible part is a wrist, or whose neighbours are all occluded, has no
    limb to be found through; with min_parts 1 the decoder still reports it.
    """
    for part in range(num_parts):
        used = {int(m[part]) for m in members if m[part] >= 0}
        for index in range(len(peaks[part])):
            if index not in used:
                person = np.full(num_parts, -1, dtype=np.int64)
                person[part] = index
                members.append(person)
                totals.append(float(peaks[part][index, 2]))


def _overlap(first, second):
    return bool(np.any((first >= 0) & (second >= 0)))


def _attach(person, peaks, part, index):
    """Give `person` peak `index` of `part` if the part is free; returns the peak score gained."""
    if person[part] >= 0:
        return 0.0
    person[part] = index
    return float(peaks[part][index, 2])


def hub_part(limbs, num_parts):
    """The part in most limbs (the neck): the one every torso limb of the tree goes through."""
    return int(np.argmax(np.bincount(np.asarray(limbs).reshape(-1), minlength=num_parts)))


def merge_hubless_fragments(members, totals, peaks, limbs, reach):
    """Join pieces of people whose hub part (the neck) was not found.

    Without a neck a person's arms, legs and head share no limb, so assembly returns them as
    separate people. Two such fragments with no part in common are merged when the closest pair of
    their hub-adjacent parts (shoulders, hips, nose) is within `reach` times the larger fragment's
    extent, closest pairs first. reach 0 turns this off.
    """
    if reach <= 0 or len(members) < 2:
        return members, totals
    num_parts = members.shape[1]
    hub = hub_part(limbs, num_parts)
    adjacent = sorted({b if a == hub else a for a, b in limbs if hub in (a, b)})
    candidates = np.nonzero((members[:, hub] < 0) & (members[:, adjacent] >= 0).any(axis=1))[0]
    if len(candidates) < 2:
        return members, totals
    xy = _member_points(members[candidates], peaks)                   # (n, P, 2), NaN = missing
    extent = np.nan_to_num(np.nanmax(xy, axis=1) - np.nanmin(xy, axis=1)).max(axis=1)   # (n,)
    near = xy[:, adjacent]                                            # (n, A, 2)
    gaps = np.linalg.norm(near[:, None, :, None] - near[None, :, None, :], axis=-1)
    gap = np.nan_to_num(gaps, nan=np.inf).reshape(len(candidates), len(candidates), -1).min(axis=-1)
    ratio = gap / np.maximum(np.maximum(extent[:, None], extent[None, :]), 1e-6)
    members, totals = members.copy(), np.asarray(totals, dtype=np.float32).copy()
    alive = np.ones(len(members), dtype=bool)
    for flat in np.argsort(ratio, axis=None):
        i, j = np.unravel_index(flat, ratio.shape)
        if ratio[i, j] > reach:
            break
        a, b = candidates[i], candidates[j]
        if i < j and alive[a] and alive[b] and not _overlap(members[a], members[b]):
            members[a] = np.maximum(members[a], members[b])
            totals[a] += totals[b]
            alive[b] = False
    return members[alive], totals[alive]


def _member_points(rows, peaks):
    """(n, P, 2) positions of each row's parts, NaN where the part is missing."""
    xy = np.full(rows.shape + (2,), np.nan, dtype=np.float32)
    for p in range(rows.shape[1]):
        have = rows[:, p] >= 0
        xy[have, p] = peaks[p][rows[have, p], :2]
    return xy


def people_from_members(members, totals, peaks, num_limbs, min_parts, min_person_score):
    """Person objects for the assembled rows that pass the part-count and mean-score filters."""
    people = []
    num_parts = members.shape[1] if len(members) else len(peaks)
    for row, total in zip(members, totals):
        found = row >= 0
        count = int(found.sum())
        if count < min_parts or total / count < min_person_score:
            continue
        keypoints = np.zeros((num_parts, 3), dtype=np.float32)
        for p in np.nonzero(found)[0]:
            keypoints[p] = peaks[p][row[p]]
        # Sum of peak and limb scores over its maximum (every part and limb found at score 1):
        # ranks complete, confident people first and stays within [0, 1] for COCO.
        score = float(min(total / (num_parts + num_limbs), 1.0))
        people.append(Person(keypoints=keypoints, found=found, score=score))
    people.sort(key=lambda person: -person.score)
    return people


def decode(heatmaps, pafs, infer_spec, skeleton, stride=STRIDE):
    """One image's maps -> list of Person in network-input pixels.

    heatmaps (h, w, P+1) and pafs (h, w, 2L) at `stride` (a batch axis of 1 is accepted).
    """
    heatmaps, pafs = _single(heatmaps, "heatmaps"), _single(pafs, "pafs")
    _check_channels(heatmaps, pafs, skeleton)
    input_h = heatmaps.shape[0] * stride
    peaks = find_peaks(heatmaps, skeleton.num_parts, infer_spec.heatmap_threshold,
                       tuple(infer_spec.output_upsampling_factor), stride)
    pafs = np.asarray(pafs, dtype=np.float32)
    connections = []
    for k, (part_a, part_b) in enumerate(skeleton.limbs):
        scores = score_limbs(peaks[part_a], peaks[part_b], pafs[..., 2 * k:2 * k + 2], input_h,
                             infer_spec.paf_num_samples, infer_spec.paf_threshold,
                             infer_spec.paf_min_positive_fraction, stride)
        connections.append(match_limb(scores))
    members, totals = assemble_people(peaks, connections, skeleton.limbs, skeleton.num_parts)
    members, totals = merge_hubless_fragments(members, totals, peaks, skeleton.limbs,
                                              infer_spec.fragment_merge_reach)
    return people_from_members(members, totals, peaks, len(skeleton.limbs),
                               infer_spec.min_parts, infer_spec.min_person_score)


def _single(maps, what):
    maps = np.asarray(maps)
    if maps.ndim == 4 and maps.shape[0] == 1:
        maps = maps[0]
    if maps.ndim != 3:
        raise ValueError(f"{what}: expected (h, w, channels) for one image, got shape {maps.shape}")
    return maps


def _check_channels(heatmaps, pafs, skeleton):
    if heatmaps.shape[-1] < skeleton.num_parts or pafs.shape[-1] != skeleton.num_pafs:
        raise ValueError(f"maps have {heatmaps.shape[-1]} heatmap and {pafs.shape[-1]} PAF channels; "
                         f"skeleton {skeleton.name} needs {skeleton.num_heatmaps} and {skeleton.num_pafs}")
    if heatmaps.shape[:2] != pafs.shape[:2]:
        raise ValueError(f"heatmaps {heatmaps.shape[:2]} and pafs {pafs.shape[:2]} differ in size")


# ---------------------------------------------------------------- COCO output

def person_to_coco(person, letterbox, skeleton, image_id):
    """A COCO keypoint result entry in original image coordinates (v=1 found, zeros missing)."""
    parts = np.zeros((skeleton.num_parts, 3), dtype=np.float32)
    parts[:, :2] = letterbox.to_image(person.keypoints[:, :2])
    parts[:, 2] = person.found
    parts[~person.found] = 0.0
    keypoints = skeleton.parts_to_coco(parts)
    return {"image_id": int(image_id), "category_id": 1,
            "keypoints": [round(float(v), 2) for v in keypoints.reshape(-1)],
            "score": round(float(person.score), 5)}
