"""Decoder maths on synthetic maps made by the training-target encoder (no TensorFlow)."""

import cv2
import numpy as np
import pytest

from bpnet.decode import decode, decode_options, find_peaks, person_to_coco
from bpnet.decode.assembly import merge_hubless_fragments
from bpnet.decode.fragments import CANONICAL_POSE, reach_bounds
from bpnet.decode.limbs import match_limb, score_limbs
from bpnet.decode.peaks import CubicUpsampler, cubic_weights
from bpnet.preprocess import Letterbox
from bpnet.skeleton import load_skeleton
from bpnet.specs import InferSpec, TargetSpec
from bpnet.targets import make_targets

SKELETON = load_skeleton()
INPUT_HW = (288, 384)
STRIDE = 8


def standing_person(cx, top, height):
    """(18, 3) parts of an upright person centred at x=cx, head at `top`, in input pixels."""
    s = height / 8.0
    named = {
        "nose": (0, 0.5), "neck": (0, 1.5), "right_shoulder": (-1, 1.5), "left_shoulder": (1, 1.5),
        "right_elbow": (-1.3, 3), "left_elbow": (1.3, 3), "right_wrist": (-1.5, 4.3), "left_wrist": (1.5, 4.3),
        "right_hip": (-0.6, 4.2), "left_hip": (0.6, 4.2), "right_knee": (-0.6, 6), "left_knee": (0.6, 6),
        "right_ankle": (-0.6, 7.8), "left_ankle": (0.6, 7.8), "right_eye": (-0.25, 0.3),
        "left_eye": (0.25, 0.3), "right_ear": (-0.5, 0.45), "left_ear": (0.5, 0.45),
    }
    parts = np.zeros((SKELETON.num_parts, 3), np.float32)
    for i, name in enumerate(SKELETON.parts):
        dx, dy = named[name]
        parts[i] = (cx + dx * s, top + dy * s, 2)
    return parts


def maps_of(people, input_hw=INPUT_HW):
    parts = np.stack(people) if people else np.zeros((0, SKELETON.num_parts, 3), np.float32)
    return make_targets(parts, SKELETON, input_hw, TargetSpec())


def assert_same_person(person, truth, tol_px=STRIDE):
    labelled = truth[:, 2] > 0
    assert np.array_equal(person.found, labelled)
    err = np.linalg.norm(person.keypoints[labelled, :2] - truth[labelled, :2], axis=1)
    assert err.max() <= tol_px, f"max part error {err.max():.2f} px"


def match_people(people, truths):
    """Pair each true person with the decoded person whose neck (or first part) is closest."""
    pairs = []
    for truth in truths:
        ref = int(np.argmax(truth[:, 2] > 0))
        dist = [np.linalg.norm(p.keypoints[ref, :2] - truth[ref, :2]) if p.found[ref] else np.inf
                for p in people]
        pairs.append((people[int(np.argmin(dist))], truth))
    return pairs


# ---------------------------------------------------------------- upsampling and peaks

@pytest.mark.parametrize("h, w, factor", [(36, 48, 8), (5, 7, 3), (28, 40, 4), (6, 6, 1)])
def test_cubic_weights_reproduce_cv2_resize(h, w, factor):
    plane = np.random.default_rng(0).random((h, w)).astype(np.float32)
    expected = cv2.resize(plane, (w * factor, h * factor), interpolation=cv2.INTER_CUBIC)
    ours = cubic_weights(h, factor) @ plane @ cubic_weights(w, factor).T
    np.testing.assert_allclose(ours, expected, atol=1e-5)


@pytest.mark.parametrize("factor", [8, 3])
def test_windows_equal_the_same_cells_of_the_fully_upsampled_map(factor):
    planes = np.random.default_rng(1).random((36, 48, 2)).astype(np.float32)
    rows, cols, chans = np.array([0, 17, 35]), np.array([20, 0, 47]), np.array([1, 0, 1])
    values, fine_rows, fine_cols = CubicUpsampler((36, 48), (factor, factor)).windows(planes, rows, cols, chans)
    for n in range(3):
        full = cv2.resize(planes[..., chans[n]], (48 * factor, 36 * factor), interpolation=cv2.INTER_CUBIC)
        inside = np.isfinite(values[n])
        expected = full[np.ix_(fine_rows[n], fine_cols[n])]
        np.testing.assert_allclose(values[n][inside], expected[inside], atol=1e-5)
        centre_y, centre_x = (rows[n] + 0.5) * factor - 0.5, (cols[n] + 0.5) * factor - 0.5
        used_rows, used_cols = fine_rows[n][inside.any(1)], fine_cols[n][inside.any(0)]
        assert np.abs(used_rows - centre_y).max() <= factor and np.abs(used_cols - centre_x).max() <= factor
        assert used_rows.min() >= 0 and used_cols.max() < 48 * factor


@pytest.mark.parametrize("factor", [1, 4, 8])
def test_peak_position_within_half_a_pixel_of_the_keypoint(factor):
    rng = np.random.default_rng(2)
    for _ in range(20):
        truth = np.zeros((1, SKELETON.num_parts, 3), np.float32)
        truth[0, 0] = (rng.uniform(20, 360), rng.uniform(20, 260), 2)
        heatmaps, _ = make_targets(truth, SKELETON, INPUT_HW, TargetSpec())
        peaks = find_peaks(heatmaps, SKELETON.num_parts, 0.1, (factor, factor))
        assert len(peaks[0]) == 1 and all(len(p) == 0 for p in peaks[1:])
        assert np.abs(peaks[0][0, :2] - truth[0, 0, :2]).max() < (0.6 if factor > 1 else 4.5)


def test_gaussian_refinement_recovers_the_keypoint_also_at_the_border():
    # The log of a Gaussian blob is a quadratic: the fit lands on the keypoint to a small fraction
    # of a pixel, also for keypoints in the outermost cells where one neighbour is missing.
    rng = np.random.default_rng(3)
    points = [(rng.uniform(8, 376), rng.uniform(8, 280)) for _ in range(15)]
    points += [(1.0, 140.0), (383.0, 60.0), (200.0, 0.5), (30.0, 287.0)]
    for x, y in points:
        truth = np.zeros((1, SKELETON.num_parts, 3), np.float32)
        truth[0, 3] = (x, y, 2)
        heatmaps, _ = make_targets(truth, SKELETON, INPUT_HW, TargetSpec())
        gaussian = find_peaks(heatmaps, SKELETON.num_parts, 0.1, refinement="gaussian")[3]
        upsampled = find_peaks(heatmaps, SKELETON.num_parts, 0.1, refinement="upsample")[3]
        assert len(gaussian) == 1
        assert np.abs(gaussian[0, :2] - (x, y)).max() < 0.01
        assert np.abs(gaussian[0, :2] - (x, y)).max() <= np.abs(upsampled[0, :2] - (x, y)).max() + 1e-3


def _same_part_of(points, part=0):
    truth = np.zeros((len(points), SKELETON.num_parts, 3), np.float32)
    for person, (x, y) in enumerate(points):
        truth[person, part] = (x, y, 2)
    heatmaps, _ = make_targets(truth, SKELETON, INPUT_HW, TargetSpec())
    return heatmaps


def _worst_miss(peaks, points):
    """Largest distance from a true point to its nearest peak (px)."""
    return max(np.linalg.norm(peaks[:, :2] - p, axis=1).min() for p in np.asarray(points))


def test_gaussian_peaks_find_both_blobs_that_share_one_3x3_maximum():
    # The same part of two small people ~1.4 cells apart on a diagonal: 3x3 NMS keeps one cell;
    # the hidden blob's cell beats its side neighbours and is recovered near its keypoint.
    rng = np.random.default_rng(5)
    misses = []
    for _ in range(20):
        x, y = rng.uniform(40, 340), rng.uniform(40, 240)
        points = [(x, y), (x + rng.uniform(7, 10) * rng.choice([-1, 1]), y + rng.uniform(7, 10))]
        heatmaps = _same_part_of(points)
        assert len(find_peaks(heatmaps, SKELETON.num_parts, 0.1, refinement="upsample")[0]) <= 2
        gaussian = find_peaks(heatmaps, SKELETON.num_parts, 0.1, refinement="gaussian")[0]
        if len(gaussian) == 2:
            misses.append(_worst_miss(gaussian, points))
    assert len(misses) >= 15
    assert np.median(misses) < 1.0 and np.mean(np.array(misses) < STRIDE / 2) >= 0.8


def test_gaussian_peaks_of_close_blobs_are_fitted_from_the_side_no_neighbour_raises(monkeypatch):
    # Two blobs of one part 9-16 px apart raise each other's near side; the symmetric fit is
    # pulled towards the neighbour, the one-sided fit from the unraised side is not.
    rng = np.random.default_rng(0)
    cases = []
    for _ in range(100):
        x, y, dist, angle = rng.uniform(40, 340), rng.uniform(40, 240), rng.uniform(9, 16), rng.uniform(0, 2 * np.pi)
        cases.append([(x, y), (x + dist * np.cos(angle), y + dist * np.sin(angle))])

    def median_miss():
        return np.median([_worst_miss(find_peaks(_same_part_of(points), SKELETON.num_parts, 0.1,
                                                 refinement="gaussian")[0], points) for points in cases])

    corrected = median_miss()
    monkeypatch.setattr("bpnet.decode.peaks.uncrowded_offsets", lambda parts, rows, cols, chans, dx, dy, curvature: (dx, dy))
    symmetric = median_miss()
    assert corrected < 0.8 and corrected < symmetric - 0.3


def test_shadowed_peaks_keep_the_per_part_cap_on_a_noisy_map():
    # Ridges of a noisy map make many cells that beat their side neighbours only.
    rng = np.random.default_rng(1)
    noisy = cv2.GaussianBlur(rng.random((36, 48, 19)).astype(np.float32), (5, 5), 1.0)
    peaks = find_peaks(noisy, SKELETON.num_parts, 0.1, refinement="gaussian", max_peaks=30)
    assert max(len(p) for p in peaks) == 30


def test_gaussian_refinement_falls_back_where_the_map_is_not_a_blob():
    heatmaps = np.zeros((36, 48, 19), np.float32)
    heatmaps[10:13, 20:23, 0] = 0.8                     # a plateau: no curvature, zero around it
    heatmaps[0, 0, 1] = 0.9                             # a corner cell: no curvature on either axis
    heatmaps[[0, 1, 0], [1, 0, 0], 1] = [0.5, 0.5, 0.9]
    gaussian = find_peaks(heatmaps, SKELETON.num_parts, 0.1, refinement="gaussian")
    upsampled = find_peaks(heatmaps, SKELETON.num_parts, 0.1, refinement="upsample")
    for part in (0, 1):
        np.testing.assert_array_equal(gaussian[part], upsampled[part])
    assert np.all(gaussian[0][:, 2] <= 1.0)


def test_peaks_below_threshold_are_ignored():
    heatmaps, _ = maps_of([standing_person(190, 40, 200)])
    assert all(len(p) == 0 for p in find_peaks(heatmaps * 0.09, SKELETON.num_parts, 0.1))


# ---------------------------------------------------------------- limbs

def test_limb_score_is_high_along_the_field_and_invalid_against_it():
    person = standing_person(190, 40, 200)
    _, pafs = maps_of([person])
    limb = SKELETON.limbs.index((SKELETON.parts.index("right_hip"), SKELETON.parts.index("right_knee")))
    a, b = SKELETON.limbs[limb]
    forward = [np.zeros((0, 3), np.float32) for _ in SKELETON.parts]
    forward[a] = np.array([[*person[a, :2], 1]], np.float32)
    forward[b] = np.array([[*person[b, :2], 1]], np.float32)
    backward = list(forward)
    backward[a], backward[b] = forward[b], forward[a]
    limb_scores = score_limbs(forward, pafs, SKELETON.limbs, INPUT_HW[0], 10, 0.05, 0.8)
    assert limb_scores[limb][0, 0] > 0.9
    assert all(s.size == 0 for k, s in enumerate(limb_scores) if k != limb)
    assert score_limbs(backward, pafs, SKELETON.limbs, INPUT_HW[0], 10, 0.05, 0.8)[limb][0, 0] == -np.inf


def test_greedy_matching_uses_each_candidate_once_best_first():
    scores = np.array([[0.9, 0.8], [0.85, -np.inf]], np.float32)
    assert match_limb(scores) == [(0, 0, pytest.approx(0.9))]
    assert match_limb(np.array([[0.5, 0.9], [0.8, 0.1]], np.float32)) == \
        [(0, 1, pytest.approx(0.9)), (1, 0, pytest.approx(0.8))]


# ---------------------------------------------------------------- whole decoder

def test_empty_maps_give_no_people():
    heatmaps, pafs = maps_of([])
    assert decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec())) == []
    assert decode(np.zeros_like(heatmaps), np.zeros_like(pafs), SKELETON, **decode_options(InferSpec(min_parts=1))) == []


def test_single_isolated_part_is_a_person_only_when_min_parts_allows():
    truth = np.zeros((SKELETON.num_parts, 3), np.float32)
    wrist = SKELETON.parts.index("left_wrist")
    truth[wrist] = (100, 120, 2)
    heatmaps, pafs = maps_of([truth])
    assert decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec(min_parts=3))) == []
    [person] = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec(min_parts=1, min_person_score=0.0)))
    assert person.num_parts == 1 and person.found[wrist]
    assert np.abs(person.keypoints[wrist, :2] - (100, 120)).max() < 1


def test_two_people_crossing_are_kept_apart():
    # Two people side by side whose arms cross: each right wrist reaches past the other's body.
    left, right = standing_person(150, 40, 200), standing_person(230, 40, 200)
    rw, lw = SKELETON.parts.index("right_wrist"), SKELETON.parts.index("left_wrist")
    left[lw, :2] = (205, 150)    # left person's left wrist reaches right, past the other's arm
    right[rw, :2] = (175, 165)   # right person's right wrist reaches left
    heatmaps, pafs = maps_of([left, right])
    people = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec()))
    assert len(people) == 2
    for person, truth in match_people(people, [left, right]):
        assert_same_person(person, truth)


def test_person_cut_by_the_border_keeps_the_parts_inside():
    truth = standing_person(190, 150, 240)          # legs below the 288-pixel input
    inside = truth[:, 1] < INPUT_HW[0]
    heatmaps, pafs = maps_of([truth])
    [person] = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec()))
    assert person.found[inside].all()
    err = np.linalg.norm(person.keypoints[inside, :2] - truth[inside, :2], axis=1)
    assert err.max() <= STRIDE
    assert person.keypoints[person.found, 1].max() < INPUT_HW[0]


@pytest.mark.parametrize("seed", range(3))
def test_round_trip_synthetic_people_within_a_stride(seed):
    rng = np.random.default_rng(seed)
    truths = [standing_person(cx, rng.uniform(10, 40), rng.uniform(150, 230))
              for cx in (60 + 95 * k + rng.uniform(-8, 8) for k in range(4))]
    heatmaps, pafs = maps_of(truths)
    people = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec()))
    assert len(people) == 4
    for person, truth in match_people(people, truths):
        assert_same_person(person, truth)


def test_neckless_pieces_merge_only_when_enabled():
    # Without the neck, the legs share no limb with the upper body (which stays joined through
    # the shoulder-ear limbs): assembly returns three pieces.
    truth = standing_person(190, 40, 200)
    truth[SKELETON.parts.index("neck"), 2] = 0
    heatmaps, pafs = maps_of([truth])
    split = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec(min_parts=1)))
    [merged] = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec(min_parts=1, fragment_merge_reach=2.0)))
    assert len(split) == 3
    assert_same_person(merged, truth)


def test_fragments_sharing_a_part_are_not_merged():
    peaks = [np.array([[10.0 * i, 10.0 * i, 1.0]], np.float32) for i in range(SKELETON.num_parts)]
    hip = SKELETON.parts.index("right_hip")
    members = np.full((2, SKELETON.num_parts), -1)
    members[:, hip] = 0
    members[0, SKELETON.parts.index("right_knee")] = 0
    merged, _ = merge_hubless_fragments(members, [1.0, 1.0], peaks, SKELETON.limbs, reach=5.0)
    assert len(merged) == 2


def test_coco_entry_in_original_image_coordinates():
    truth = standing_person(190, 40, 200)
    heatmaps, pafs = maps_of([truth])
    [person] = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec()))
    box = Letterbox(scale=0.5, image_hw=(576, 768), input_hw=INPUT_HW)
    entry = person_to_coco(person, box, SKELETON, image_id=7)
    keypoints = np.array(entry["keypoints"]).reshape(17, 3)
    assert entry["image_id"] == 7 and entry["category_id"] == 1 and 0 < entry["score"] <= 1
    expected = SKELETON.parts_to_coco(np.concatenate([box.to_image(truth[:, :2]), truth[:, 2:]], 1))
    assert np.abs(keypoints[:, :2] - expected[:, :2]).max() <= 2 * STRIDE
    assert set(keypoints[:, 2]) == {1.0}


def test_missing_parts_are_zero_in_the_coco_entry():
    truth = standing_person(190, 40, 200)
    truth[SKELETON.parts.index("left_ankle"), 2] = 0
    heatmaps, pafs = maps_of([truth])
    [person] = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec()))
    entry = person_to_coco(person, Letterbox(1.0, INPUT_HW, INPUT_HW), SKELETON, 1)
    ankle = SKELETON.coco_keypoints.index("left_ankle")
    assert entry["keypoints"][3 * ankle:3 * ankle + 3] == [0.0, 0.0, 0.0]


def test_maps_with_wrong_channels_are_refused():
    heatmaps, pafs = maps_of([])
    with pytest.raises(ValueError, match="PAF channels"):
        decode(heatmaps, pafs[..., :10], SKELETON, **decode_options(InferSpec()))


# ---------------------------------------------------------------- joining pieces of people

JOIN = InferSpec(min_parts=1, fragment_join_slack=1.2, peak_refinement="gaussian")


def without(person, *names):
    """A copy with the named parts unlabelled (a missing shoulder also removes the neck)."""
    person = person.copy()
    for name in names:
        person[SKELETON.parts.index(name), 2] = 0
    if {"left_shoulder", "right_shoulder"} & set(names):
        person[SKELETON.parts.index("neck"), 2] = 0
    return person


def test_reach_bounds_follow_the_bones_and_the_rigid_torso():
    bounds = reach_bounds(SKELETON.parts, SKELETON.limbs)
    at = lambda a, b: bounds[SKELETON.parts.index(a), SKELETON.parts.index(b)]  # noqa: E731
    pose = {k: np.array(v) for k, v in CANONICAL_POSE.items()}
    arm = np.linalg.norm(pose["right_shoulder"] - pose["right_elbow"]) + \
        np.linalg.norm(pose["right_elbow"] - pose["right_wrist"])
    assert at("right_shoulder", "right_wrist") == pytest.approx(arm, rel=1e-5)
    assert at("right_hip", "left_hip") == pytest.approx(2 * 0.0955, rel=1e-5)   # rigid, not via the neck
    assert np.allclose(bounds, bounds.T) and np.all(np.diag(bounds) == 0)
    # a chain is never longer than going through any third part
    assert np.all(bounds[:, None, :] <= bounds[:, :, None] + bounds[None, :, :] + 1e-6)


def test_person_missing_a_shoulder_is_rejoined():
    # No left shoulder -> no neck: assembly gives an upper body, a left forearm, a right leg and
    # a left leg. Body proportions put them back into one person.
    truth = without(standing_person(190, 40, 200), "left_shoulder")
    heatmaps, pafs = maps_of([truth])
    split = decode(heatmaps, pafs, SKELETON, **decode_options(InferSpec(min_parts=1)))
    [joined] = decode(heatmaps, pafs, SKELETON, **decode_options(JOIN))
    assert len(split) == 4
    assert_same_person(joined, truth, tol_px=0.5)


def test_lone_wrist_joins_the_person_whose_shoulder_it_hangs_from():
    # The elbow is hidden, so the wrist has no limb to its person; a second, head-only person
    # stands close by. The wrist goes to the body it is an arm's length from.
    owner = without(standing_person(150, 60, 180), "right_elbow")
    head = np.zeros_like(owner)
    for name in ("nose", "right_eye", "left_eye", "right_ear", "left_ear"):
        head[SKELETON.parts.index(name)] = owner[SKELETON.parts.index(name)] + (-70, 95, 0)
    heatmaps, pafs = maps_of([owner, head])
    people = decode(heatmaps, pafs, SKELETON, **decode_options(JOIN))
    assert len(people) == 2
    for person, truth in match_people(people, [owner, head]):
        assert_same_person(person, truth, tol_px=0.5)


@pytest.mark.parametrize("gap", [90, 110])
@pytest.mark.parametrize("hidden", [("left_shoulder", "right_shoulder"), ("left_shoulder", "left_shoulder")])
def test_crowd_side_by_side_keeps_each_persons_pieces(gap, hidden):
    # A row of four neckless people (a shoulder hidden each, so each is an upper body, a loose
    # forearm and two legs) side by side: a neighbour's hip is only 2-3 hip widths away and the
    # neighbours' wrists 15-35 px apart, yet every piece goes back to its own body. (Closer than
    # that, a loose forearm next to the neighbour's hand is ambiguous to geometry alone.)
    truths = [without(standing_person(45 + gap * k, 30 + 6 * k, 200 - 10 * k), hidden[k % 2]) for k in range(4)]
    width = 45 + gap * 3 + 60
    heatmaps, pafs = maps_of(truths, (288, width + (-width) % 8))
    people = decode(heatmaps, pafs, SKELETON, **decode_options(JOIN))
    assert len(people) == 4
    for person, truth in match_people(people, truths):
        assert_same_person(person, truth, tol_px=0.5)


def test_pieces_of_different_people_out_of_reach_stay_apart():
    # One person's legs and another's head, far apart: no body is that long.
    legs = standing_person(80, 40, 200)
    head = standing_person(320, 40, 200)
    upper = [n for n in SKELETON.parts if "hip" not in n and "knee" not in n and "ankle" not in n]
    legs = without(legs, *upper)
    head = without(head, *[n for n in SKELETON.parts if n not in ("nose", "right_eye", "left_eye")])
    heatmaps, pafs = maps_of([legs, head])
    people = decode(heatmaps, pafs, SKELETON, **decode_options(JOIN))
    legs_found = [p for p in people if p.found[SKELETON.parts.index("right_hip")]]
    assert all(not p.found[SKELETON.parts.index("nose")] for p in legs_found)


def test_a_limb_field_that_rejects_the_pair_vetoes_the_join():
    # Two legs-only fragments (a thigh and a shin of different people) where the knee-hip field
    # between them was scored and rejected must not be joined even when close.
    first = without(standing_person(150, 20, 200), *[n for n in SKELETON.parts if n not in ("right_hip", "left_hip")])
    second = without(standing_person(150, 20, 200), *[n for n in SKELETON.parts if n not in ("right_knee", "right_ankle")])
    second[:, :2] += (6, 0)                 # the knee sits just beside the first person's hip line
    heatmaps, pafs = maps_of([first, second])
    hip_knee = SKELETON.limbs.index((SKELETON.parts.index("right_hip"), SKELETON.parts.index("right_knee")))
    pafs[..., 2 * hip_knee:2 * hip_knee + 2] *= -1      # the field points the other way: not a limb
    people = decode(heatmaps, pafs, SKELETON, **decode_options(JOIN))
    knee = SKELETON.parts.index("right_knee")
    hip = SKELETON.parts.index("right_hip")
    assert not any(p.found[knee] and p.found[hip] for p in people)
