"""Targets: Gaussian heatmaps, background and PAFs at the output stride (pure numpy, fast)."""

import json

import numpy as np
import pytest

from bpnet.geometry import cells_to_pixels
from bpnet.skeleton import load_skeleton
from bpnet.specs import TargetSpec
from bpnet.targets import make_heatmaps, make_pafs, make_targets

SKELETON = load_skeleton()
CELL = 8


def one_person(points, num_parts=SKELETON.num_parts):
    """(1, P, 3) parts with the given {part_index: (x, y)} labelled (v=2), the rest unlabelled."""
    parts = np.zeros((1, num_parts, 3), np.float32)
    for index, (x, y) in points.items():
        parts[0, index] = (x, y, 2)
    return parts


def test_heatmap_peak_is_one_at_a_keypoint_on_a_cell_centre():
    x, y = cells_to_pixels(5, CELL), cells_to_pixels(3, CELL)  # centre of cell (row 3, col 5)
    heatmaps = make_heatmaps(one_person({4: (x, y)}), (8, 10), CELL, sigma_px=7.0)
    assert heatmaps.shape == (8, 10, SKELETON.num_heatmaps) and heatmaps.dtype == np.float32
    assert heatmaps[3, 5, 4] == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(heatmaps[..., 4]), (8, 10)) == (3, 5)
    # one cell away the value is the Gaussian at 8 px: exp(-64 / 98)
    assert heatmaps[3, 6, 4] == pytest.approx(np.exp(-64 / (2 * 49)), rel=1e-5)
    assert heatmaps[..., 0].max() == 0.0  # unlabelled parts stay empty
    assert heatmaps[3, 5, -1] == pytest.approx(0.0, abs=1e-6)  # background is 1 - max(parts)
    assert heatmaps[0, 0, -1] == pytest.approx(1.0 - heatmaps[0, 0, :-1].max())


def test_heatmap_off_centre_keypoint_peaks_in_its_cell_below_one():
    heatmaps = make_heatmaps(one_person({0: (21.0, 13.0)}), (4, 4), CELL, sigma_px=4.0)
    assert np.unravel_index(np.argmax(heatmaps[..., 0]), (4, 4)) == (1, 2)  # x 21 -> col 2, y 13 -> row 1
    assert 0.5 < heatmaps[1, 2, 0] < 1.0


def test_heatmaps_take_the_max_over_people_not_the_sum():
    a = one_person({2: (19.5, 19.5)})
    both = np.concatenate([a, a], axis=0)
    single = make_heatmaps(a, (6, 6), CELL, 6.0)
    assert np.allclose(make_heatmaps(both, (6, 6), CELL, 6.0), single)


def test_unlabelled_and_no_people_give_pure_background():
    parts = one_person({3: (20.0, 20.0)})
    parts[0, 3, 2] = 0  # v = 0: not labelled
    for people in (parts, np.zeros((0, SKELETON.num_parts, 3))):
        heatmaps = make_heatmaps(people, (4, 5), CELL, 7.0)
        assert np.all(heatmaps[..., :-1] == 0) and np.all(heatmaps[..., -1] == 1)


def test_paf_is_the_unit_vector_along_a_horizontal_limb_and_zero_far_away():
    y = cells_to_pixels(4, CELL)
    limbs = ((0, 1),)
    parts = one_person({0: (cells_to_pixels(1, CELL), y), 1: (cells_to_pixels(8, CELL), y)}, num_parts=2)
    pafs = make_pafs(parts, limbs, (10, 10), CELL, width_px=8.0)
    assert pafs.shape == (10, 10, 2)
    on_limb = pafs[4, 1:9]
    assert np.allclose(on_limb, [1.0, 0.0])
    assert np.allclose(pafs[3, 2:8], [1.0, 0.0]) and np.allclose(pafs[5, 2:8], [1.0, 0.0])  # within 8 px
    assert np.all(pafs[:3] == 0) and np.all(pafs[6:] == 0)  # 16 px and more away
    # the band is a capsule: 8 px beyond an end on the limb's line is in, diagonally off it is out
    assert np.allclose(pafs[4, 0], [1.0, 0.0]) and np.allclose(pafs[4, 9], [1.0, 0.0])
    assert np.all(pafs[3, 0] == 0) and np.all(pafs[5, 9] == 0)
    narrow = make_pafs(parts, limbs, (10, 10), CELL, width_px=4.0)
    assert np.all(narrow[4, 0] == 0) and np.all(narrow[3] == 0) and np.allclose(narrow[4, 1:9], [1.0, 0.0])


def test_paf_diagonal_limb_direction_points_from_first_to_second_part():
    limbs = ((0, 1),)
    start, end = (60.0, 10.0), (10.0, 60.0)
    pafs = make_pafs(one_person({0: start, 1: end}, num_parts=2), limbs, (9, 9), CELL, width_px=6.0)
    lit = np.abs(pafs).sum(axis=-1) > 0
    assert lit.sum() > 5
    assert np.allclose(pafs[lit], np.array([-1.0, 1.0]) / np.sqrt(2), atol=1e-6)


def test_paf_averages_where_two_people_limbs_overlap():
    limbs = ((0, 1),)
    right = one_person({0: (3.5, 19.5), 1: (35.5, 19.5)}, num_parts=2)
    down = one_person({0: (19.5, 3.5), 1: (19.5, 35.5)}, num_parts=2)
    pafs = make_pafs(np.concatenate([right, down]), limbs, (5, 5), CELL, width_px=4.0)
    assert np.allclose(pafs[2, 2], [0.5, 0.5])  # crossing cell: mean of (1, 0) and (0, 1)
    assert np.allclose(pafs[2, 0], [1.0, 0.0]) and np.allclose(pafs[0, 2], [0.0, 1.0])


def test_paf_needs_both_ends_labelled_and_skips_zero_length():
    limbs = ((0, 1),)
    parts = one_person({0: (10.0, 10.0), 1: (30.0, 10.0)}, num_parts=2)
    parts[0, 1, 2] = 0
    assert np.all(make_pafs(parts, limbs, (5, 5), CELL, 8.0) == 0)
    same = one_person({0: (10.0, 10.0), 1: (10.0, 10.0)}, num_parts=2)
    assert np.all(make_pafs(same, limbs, (5, 5), CELL, 8.0) == 0)


def test_make_targets_on_a_real_coco_person(coco_mini):
    """A real annotated person: every labelled part peaks in the cell of its keypoint and every
    limb with both ends labelled has unit vectors along it."""
    annotations, _ = coco_mini
    data = json.loads(annotations.read_text())
    ann = max((a for a in data["annotations"] if not a["iscrowd"]), key=lambda a: a["num_keypoints"])
    parts = SKELETON.coco_to_parts(np.asarray(ann["keypoints"], np.float32).reshape(1, 17, 3))
    image = next(i for i in data["images"] if i["id"] == ann["image_id"])
    input_hw = (image["height"] // 8 * 8 + 8, image["width"] // 8 * 8 + 8)
    heatmaps, pafs = make_targets(parts, SKELETON, input_hw, TargetSpec(heatmap_sigma_px=3.0, paf_width_px=4.0))
    assert heatmaps.shape == (input_hw[0] // 8, input_hw[1] // 8, 19) and pafs.shape[-1] == 38
    checked = 0
    for p in np.nonzero(parts[0, :, 2] > 0)[0]:
        x, y = parts[0, p, :2]
        row, col = int((y + 0.5) // 8), int((x + 0.5) // 8)
        # the cell holding the keypoint has the nearest centre (at most 4 px off in x and y); the
        # neck, a midpoint, can sit exactly on a cell border, hence a tie rather than argmax
        assert heatmaps[row, col, p] == pytest.approx(heatmaps[..., p].max()), SKELETON.parts[p]
        assert heatmaps[row, col, p] >= np.exp(-32 / (2 * 3.0 ** 2))
        assert heatmaps[row, col, -1] == pytest.approx(1 - heatmaps[row, col, :-1].max())
        checked += 1
    assert checked >= 10
    for i, (a, b) in enumerate(SKELETON.limbs):
        if parts[0, a, 2] > 0 and parts[0, b, 2] > 0:
            vec = pafs[..., 2 * i:2 * i + 2]
            lit = np.abs(vec).sum(axis=-1) > 0
            unit = (parts[0, b, :2] - parts[0, a, :2]) / np.linalg.norm(parts[0, b, :2] - parts[0, a, :2])
            if lit.any():  # only one person: every lit cell holds exactly this limb's direction
                assert np.allclose(vec[lit], unit, atol=1e-5), SKELETON.limbs[i]
