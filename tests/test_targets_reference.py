"""The vectorised targets are bit-identical to the per-limb loop they replaced (issue 17).

`reference_heatmaps` / `reference_pafs` below are the previous implementation, copied verbatim
(loops over people and limbs), kept here as the definition the fast code must reproduce exactly:
same bytes, not just close values, because training data must not change with a speed-up."""

import numpy as np
import pytest

from bpnet.geometry import cell_centers
from bpnet.skeleton import load_skeleton
from bpnet.targets import HEATMAP_FLOOR, background, make_heatmaps, make_pafs

SKELETON = load_skeleton()


# ---------------------------------------------------------------- the previous implementation

def reference_heatmaps(parts, grid_hw, cell_px, sigma_px):
    parts = np.asarray(parts, dtype=np.float32)
    h, w = grid_hw
    num_parts = parts.shape[1]
    xs, ys = cell_centers(w, cell_px), cell_centers(h, cell_px)
    heatmaps = np.zeros((h, w, num_parts + 1), dtype=np.float32)
    inv_two_sigma_sq = 1.0 / (2.0 * sigma_px * sigma_px)
    for person, part in zip(*np.nonzero(parts[..., 2] > 0)):
        x, y = parts[person, part, :2]
        blob = np.outer(np.exp(-(ys - y) ** 2 * inv_two_sigma_sq), np.exp(-(xs - x) ** 2 * inv_two_sigma_sq))
        np.maximum(heatmaps[..., part], blob, out=heatmaps[..., part])
    heatmaps[..., :num_parts][heatmaps[..., :num_parts] < HEATMAP_FLOOR] = 0.0
    heatmaps[..., num_parts] = background(heatmaps[..., :num_parts])
    return heatmaps


def reference_limb_band(start, end, xs, ys, width_px):
    direction = np.asarray(end, np.float64) - np.asarray(start, np.float64)
    length = float(np.hypot(*direction))
    if length < 1e-6:
        return None, None
    unit = direction / length
    dx, dy = xs - start[0], ys - start[1]
    along = np.clip(dx * unit[0] + dy * unit[1], 0.0, length)
    dist = np.hypot(dx - along * unit[0], dy - along * unit[1])
    return dist <= width_px, unit.astype(np.float32)


def reference_pafs(parts, limbs, grid_hw, cell_px, width_px):
    parts = np.asarray(parts, dtype=np.float32)
    h, w = grid_hw
    xs, ys = np.meshgrid(cell_centers(w, cell_px), cell_centers(h, cell_px))
    pafs = np.zeros((h, w, 2 * len(limbs)), dtype=np.float32)
    is_labelled = parts[..., 2] > 0
    for limb, (a, b) in enumerate(limbs):
        summed = np.zeros((h, w, 2), dtype=np.float32)
        count = np.zeros((h, w), dtype=np.float32)
        for person in np.nonzero(is_labelled[:, a] & is_labelled[:, b])[0]:
            band, unit = reference_limb_band(parts[person, a, :2], parts[person, b, :2], xs, ys, width_px)
            if band is None:
                continue
            summed[band] += unit
            count[band] += 1
        covered = count > 0
        summed[covered] /= count[covered][:, None]
        pafs[..., 2 * limb:2 * limb + 2] = summed
    return pafs


# ---------------------------------------------------------------- random scenes with edge cases

def random_people(rng, grid_hw, cell_px, num_parts=SKELETON.num_parts):
    """(N, P, 3) people with the awkward cases mixed in: keypoints on cell centres, at and beyond
    the borders, zero-length limbs, exact duplicates (overlaps), unlabelled parts, v = 1 and 2."""
    h_px, w_px = grid_hw[0] * cell_px, grid_hw[1] * cell_px
    num_people = int(rng.choice([0, 1, 1, 2, 3, 5, 8, 13]))
    parts = np.zeros((num_people, num_parts, 3), np.float32)
    for person in range(num_people):
        centre = rng.uniform([-0.2 * w_px, -0.2 * h_px], [1.2 * w_px, 1.2 * h_px])
        spread = rng.uniform(2.0, 0.5 * max(h_px, w_px))
        parts[person, :, :2] = centre + rng.normal(0.0, spread, (num_parts, 2))
        parts[person, :, 2] = rng.choice([0, 1, 2], num_parts, p=[0.25, 0.25, 0.5])
        kind = rng.integers(6)
        if kind == 0:   # on cell centres
            cells = rng.integers(-1, max(grid_hw) + 1, (num_parts, 2))
            parts[person, :, :2] = (cells + 0.5) * cell_px - 0.5
        elif kind == 1:   # pinned to the borders and corners
            parts[person, :, 0] = rng.choice([-0.5, 0.0, w_px - 1.0, w_px - 0.5, w_px], num_parts)
            parts[person, :, 1] = rng.choice([-0.5, 0.0, h_px - 1.0, h_px - 0.5, h_px], num_parts)
        elif kind == 2:   # all parts at one point: every limb has zero length
            parts[person, :, :2] = centre
        elif kind == 3:   # a few parts collapsed onto their neighbours (some zero-length limbs)
            for a, b in SKELETON.limbs[: rng.integers(1, 6)]:
                parts[person, b, :2] = parts[person, a, :2]
        elif kind == 4 and person:   # an exact duplicate of the previous person (full overlap)
            parts[person] = parts[person - 1]
        # kind 5: as drawn
    return parts


CASES = [(seed, grid_hw, cell_px) for seed in range(120)
         for grid_hw, cell_px in [((46, 46), 8), ((1, 1), 8), ((5, 9), 8), ((36, 48), 8), ((16, 12), 4)][seed % 5:seed % 5 + 1]]


@pytest.mark.parametrize("seed, grid_hw, cell_px", CASES)
def test_vectorised_targets_are_bit_identical_to_the_reference(seed, grid_hw, cell_px):
    rng = np.random.default_rng(seed)
    sigma, width = float(rng.uniform(1.0, 12.0)), float(rng.uniform(0.5, 12.0))
    for _ in range(3):
        parts = random_people(rng, grid_hw, cell_px)
        heat, ref_heat = make_heatmaps(parts, grid_hw, cell_px, sigma), reference_heatmaps(parts, grid_hw, cell_px, sigma)
        pafs = make_pafs(parts, SKELETON.limbs, grid_hw, cell_px, width)
        ref_pafs = reference_pafs(parts, SKELETON.limbs, grid_hw, cell_px, width)
        for fast, slow in ((heat, ref_heat), (pafs, ref_pafs)):
            assert fast.dtype == slow.dtype and fast.shape == slow.shape
            assert fast.tobytes() == slow.tobytes(), np.argwhere(fast != slow)[:5]


def test_reference_comparison_covers_the_edge_cases():
    """The random scenes do hit overlaps, zero-length limbs and off-map parts (else the test
    above could pass without exercising them)."""
    seen = {"overlap": 0, "zero_length": 0, "outside": 0, "lit": 0}
    for seed, grid_hw, cell_px in CASES:
        rng = np.random.default_rng(seed)
        rng.uniform(size=2)
        parts = random_people(rng, grid_hw, cell_px)
        labelled = parts[..., 2] > 0
        for a, b in SKELETON.limbs:
            both = labelled[:, a] & labelled[:, b]
            seen["zero_length"] += int(np.sum(both & np.all(parts[:, a, :2] == parts[:, b, :2], axis=-1)))
        seen["outside"] += int(np.sum(labelled & ((parts[..., 0] < 0) | (parts[..., 1] < 0))))
        xs, ys = np.meshgrid(cell_centers(grid_hw[1], cell_px), cell_centers(grid_hw[0], cell_px))
        for a, b in SKELETON.limbs:
            bands = [reference_limb_band(parts[n, a, :2], parts[n, b, :2], xs, ys, 6.0)[0]
                     for n in np.nonzero(labelled[:, a] & labelled[:, b])[0]]
            covered = sum(band.astype(int) for band in bands if band is not None)
            seen["lit"] += int(np.sum(np.asarray(covered) > 0))
            seen["overlap"] += int(np.sum(np.asarray(covered) > 1))   # cells averaging two people
    assert all(count > 0 for count in seen.values()), seen
