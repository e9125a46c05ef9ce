"""Steps 2-3 of decoding: PAF line-integral scores of every candidate limb and greedy matching
(numpy). PAFs are sampled bilinearly from the stride-8 maps (exactly what a linear upsampling
would give) instead of being resized."""

import numpy as np

from bpnet.geometry import pixels_to_cells
from bpnet.limits import STRIDE


def sample_bilinear(plane, x_cells, y_cells, channels):
    """Bilinear samples of (h, w, C) `plane` at fractional cell coordinates.

    x_cells, y_cells, channels: same shape (...); channels (...) index the last axis of `plane`.
    """
    h, w = plane.shape[:2]
    x = np.clip(x_cells, 0, w - 1)
    y = np.clip(y_cells, 0, h - 1)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    tx, ty = x - x0, y - y0
    top = plane[y0, x0, channels] * (1 - tx) + plane[y0, x1, channels] * tx
    bottom = plane[y1, x0, channels] * (1 - tx) + plane[y1, x1, channels] * tx
    return top * (1 - ty) + bottom * ty


def segment_scores(starts, ends, pafs, limb_index, input_h, num_samples, paf_threshold,
                   min_positive_fraction, stride=STRIDE):
    """PAF line-integral scores of M candidate segments (starts, ends (M, 2) input pixels) of
    limbs `limb_index` (M,) whose fields are channels (2k, 2k+1) of `pafs` (h, w, 2L) at `stride`.

    Returns (M,) float32 scores, -inf where the segment is not a plausible limb.
    """
    vec = ends - starts                                           # (M, 2)
    length = np.linalg.norm(vec, axis=-1)                         # (M,)
    unit = vec / np.maximum(length, 1e-6)[:, None]
    t = np.linspace(0.0, 1.0, num_samples, dtype=np.float32)
    points = starts[:, None, :] + vec[:, None, :] * t[:, None]    # (M, S, 2)
    x_cells = pixels_to_cells(points[..., 0], stride)
    y_cells = pixels_to_cells(points[..., 1], stride)
    channel_x = np.broadcast_to(2 * limb_index[:, None], x_cells.shape)
    along = (sample_bilinear(pafs, x_cells, y_cells, channel_x) * unit[:, None, 0]
             + sample_bilinear(pafs, x_cells, y_cells, channel_x + 1) * unit[:, None, 1])  # (M, S)
    positive = (along > paf_threshold).mean(axis=-1)
    # Long limbs cross other people's fields more easily; OpenPose's prior penalises any limb
    # longer than half the input height.
    prior = np.minimum(0.5 * input_h / np.maximum(length, 1e-6) - 1.0, 0.0)
    score = along.mean(axis=-1) + prior
    valid = (positive >= min_positive_fraction) & (score > 0) & (length > 0)
    return np.where(valid, score, -np.inf).astype(np.float32)


def score_limbs(peaks, pafs, limbs, input_h, num_samples, paf_threshold, min_positive_fraction,
                stride=STRIDE):
    """Per limb, the (na, nb) scores of every candidate pair (-inf = not a limb), all limbs in
    one vectorised pass. peaks: per part (n, 3) arrays in input pixels; pafs (h, w, 2L)."""
    starts, ends, limb_index, shapes = [], [], [], []
    for k, (a, b) in enumerate(limbs):
        na, nb = len(peaks[a]), len(peaks[b])
        shapes.append((na, nb))
        if na and nb:
            starts.append(np.repeat(peaks[a][:, :2], nb, axis=0))
            ends.append(np.tile(peaks[b][:, :2], (na, 1)))
            limb_index.append(np.full(na * nb, k))
    flat = segment_scores(np.concatenate(starts), np.concatenate(ends), pafs,
                          np.concatenate(limb_index), input_h, num_samples, paf_threshold,
                          min_positive_fraction, stride) if starts else np.zeros(0, np.float32)
    out, offset = [], 0
    for na, nb in shapes:
        size = na * nb if na and nb else 0
        out.append(flat[offset:offset + size].reshape(na, nb) if size else np.full((na, nb), -np.inf, np.float32))
        offset += size
    return out


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
