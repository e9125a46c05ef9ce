"""Step 4 of decoding: limb connections grow people; pieces of one person that share no limb are
merged (`merge_hubless_fragments`) or joined by body proportions (`bpnet.decode.fragments`);
people with too few parts or too low a score are dropped (numpy)."""

from dataclasses import dataclass

import numpy as np

from bpnet.limits import STRIDE

# Peak jitter allowed when judging body proportions (quarter of a stride-8 cell).
JOIN_NOISE_PX = STRIDE / 4


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
