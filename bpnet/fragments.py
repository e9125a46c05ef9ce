"""Join the pieces of one person that limb assembly leaves apart. Pure numpy.

Why pieces exist: assembly only links two parts through a limb whose field connects them. In the
18-part skeleton every torso limb goes through the neck, and the neck is the midpoint of the
shoulders, so a person seen with one shoulder (or none) comes out as an upper body, a right leg
and a left leg; a wrist whose elbow is hidden comes out alone. A perfect network predicts exactly
these pieces (the training targets have no neck and no field for them), so only geometry can put
them back together.

The rule (`join_fragments`): a body cannot stretch. From average adult proportions
(`CANONICAL_POSE`, head enlarged by HEAD_ALLOWANCE) we know, for every pair of parts, the longest
distance they can be apart as a fraction of body height: bones (limbs) rotate freely, the torso
(neck, shoulders, hips) and the head (nose, eyes, ears) are rigid, and the bound is the shortest
chain between the two parts (`reach_bounds`). A piece's own parts give a lower bound of its body
height in pixels. Two pieces with no part in common may belong together when the body their
cross pairs need is at most `slack` x the larger piece's height; they are joined mutual-best
first (each is the other's likeliest partner) and never through a limb whose field was measured
and rejected for that very pair of peaks. Nothing here reads ground truth: the same rule runs on a
network's predicted maps.
"""

from functools import lru_cache

import numpy as np

# Frontal standing pose, (x, y) in fractions of body height, y up from the floor. Landmark heights
# and widths from Drillis & Contini's segment proportions (shoulder 0.818 H, elbow 0.630, wrist
# 0.485, hip 0.530, knee 0.285, ankle 0.039, eye 0.936, chin 0.870; shoulder width 0.259, hip
# width 0.191); eye spacing and head breadth from typical adult head sizes. x > 0 is the person's left.
CANONICAL_POSE = {
    "nose": (0.0, 0.905), "neck": (0.0, 0.818),
    "right_eye": (-0.018, 0.936), "left_eye": (0.018, 0.936),
    "right_ear": (-0.044, 0.926), "left_ear": (0.044, 0.926),
    "right_shoulder": (-0.1295, 0.818), "left_shoulder": (0.1295, 0.818),
    "right_elbow": (-0.1295, 0.630), "left_elbow": (0.1295, 0.630),
    "right_wrist": (-0.1295, 0.485), "left_wrist": (0.1295, 0.485),
    "right_hip": (-0.0955, 0.530), "left_hip": (0.0955, 0.530),
    "right_knee": (-0.0955, 0.285), "left_knee": (0.0955, 0.285),
    "right_ankle": (-0.0955, 0.039), "left_ankle": (0.0955, 0.039),
}
# Head parts are placed this many times further from the neck than in the adult pose: a child's
# head is up to ~1.5x larger relative to height, and annotated ears spread wider than the skull.
# The bounds must hold for them, else a head would claim a too-large body.
HEAD_ALLOWANCE = 1.5
HEAD_PARTS = ("nose", "right_eye", "left_eye", "right_ear", "left_ear")
# Parts that keep their mutual distances whatever the pose (bending only shortens them in the image).
RIGID_GROUPS = (("neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip"),
                ("nose", "right_eye", "left_eye", "right_ear", "left_ear"))


@lru_cache(maxsize=None)
def reach_bounds(parts, limbs):
    """(P, P) float32: the longest image distance between two parts, in body heights.

    parts: part names; limbs: (a, b) index pairs. Shortest path over limbs (any angle) and rigid
    links, each as long as in CANONICAL_POSE. inf for parts the pose does not know or cannot reach.
    """
    index = {name: i for i, name in enumerate(parts)}
    num_parts = len(parts)
    bound = np.full((num_parts, num_parts), np.inf)
    np.fill_diagonal(bound, 0.0)
    pose = allowed_pose()

    def link(a, b):
        if parts[a] in pose and parts[b] in pose:
            length = np.hypot(*np.subtract(pose[parts[a]], pose[parts[b]]))
            bound[a, b] = bound[b, a] = min(bound[a, b], length)

    for a, b in limbs:
        link(a, b)
    for group in RIGID_GROUPS:
        members = [index[name] for name in group if name in index]
        for i, a in enumerate(members):
            for b in members[i + 1:]:
                link(a, b)
    for k in range(num_parts):   # Floyd-Warshall: 18 parts, computed once per skeleton
        bound = np.minimum(bound, bound[:, k:k + 1] + bound[k:k + 1, :])
    bound = bound.astype(np.float32)
    bound.setflags(write=False)   # cached and shared
    return bound


def allowed_pose():
    """CANONICAL_POSE with the head parts moved HEAD_ALLOWANCE times further from the neck."""
    neck = np.asarray(CANONICAL_POSE["neck"])
    return {name: tuple(neck + HEAD_ALLOWANCE * (np.asarray(xy) - neck)) if name in HEAD_PARTS else xy
            for name, xy in CANONICAL_POSE.items()}


def join_fragments(members, totals, peaks, limbs, limb_scores, bounds, slack, noise_px, unscaled_height_px):
    """Join pieces of people, mutual-best pairs first, round after round until no pair fits.

    members (n, P) peak index per part or -1; totals (n,) score sums (added when joined); peaks
    per part (m, 3) arrays; limb_scores: per limb the (na, nb) field scores of `score_limbs`;
    bounds from `reach_bounds`. slack <= 0 turns joining off.

    A pair fits when the body height its cross pairs need is at most `slack` times the larger
    piece's own height (`unscaled_height_px`, the input height, when neither piece has a scale:
    a person is at most as tall as the image), and no limb field vetoes it. Each piece prefers the
    partner with the likeliest link: a part at the end of a chain L body heights long, at any
    angle and any bend, is found at distance d with a density ~ 1 / (d x L x height), so the cost
    is height x min over cross pairs of L x (d + noise_px).
    """
    members = np.asarray(members)
    totals = np.asarray(totals, dtype=np.float32)
    if slack <= 0 or len(members) < 2:
        return members, totals
    limb_at = limb_lookup(limbs, members.shape[1])
    while True:
        joined = best_joins(members, peaks, limbs, limb_scores, limb_at, bounds, slack, noise_px,
                            unscaled_height_px)
        if not joined:
            return members, totals
        members, totals = merge_pairs(members, totals, joined)


def limb_lookup(limbs, num_parts):
    """(P, P) int: index of the limb between two parts (either order), -1 if none."""
    table = np.full((num_parts, num_parts), -1, dtype=np.int64)
    for k, (a, b) in enumerate(limbs):
        table[a, b] = table[b, a] = k
    return table


def piece_points(members, peaks):
    """Every found part of every piece: (piece (T,), part (T,), peak index (T,), xy (T, 2))."""
    piece, part = np.nonzero(members >= 0)
    index = members[piece, part]
    xy = np.zeros((len(piece), 2), dtype=np.float32)
    for p in np.unique(part):
        at = part == p
        xy[at] = peaks[p][index[at], :2]
    return piece, part, index, xy


def best_joins(members, peaks, limbs, limb_scores, limb_at, bounds, slack, noise_px, unscaled_height_px):
    """The mutual-best fitting pairs (i, j) of pieces for one round (see `join_fragments`)."""
    n = len(members)
    piece, part, index, xy = piece_points(members, peaks)
    u, v = np.triu_indices(len(piece), k=1)                 # point pairs; piece[u] <= piece[v]
    dist = np.linalg.norm(xy[u] - xy[v], axis=1)
    bound = bounds[part[u], part[v]]
    with np.errstate(invalid="ignore", divide="ignore"):
        # body height needed for this pair; parts the pose does not know (inf bound) need none
        need = np.where(np.isfinite(bound), (dist - noise_px) / bound, 0.0)
    same = piece[u] == piece[v]
    heights = np.zeros(n)
    np.maximum.at(heights, piece[u][same], need[same])
    cross = ~same
    key = piece[u][cross] * n + piece[v][cross]
    if len(key) == 0:
        return []
    required = np.zeros(n * n)
    np.maximum.at(required, key, need[cross])
    link = np.full(n * n, np.inf)
    np.minimum.at(link, key, np.where(np.isfinite(bound), bound * (dist + noise_px), np.inf)[cross])
    blocked = np.zeros(n * n, dtype=bool)
    blocked[key[part[u][cross] == part[v][cross]]] = True   # both pieces have this part
    blocked[key[vetoed_links(u[cross], v[cross], part, index, limbs, limb_at, limb_scores)]] = True
    candidates = np.unique(key)
    i, j = candidates // n, candidates % n
    own = np.maximum(heights[i], heights[j])
    own = np.where(own > 0, own, unscaled_height_px)
    fits = ~blocked[candidates] & (required[candidates] <= slack * own)
    if not fits.any():
        return []
    cost = own * link[candidates]
    pairs = np.stack([i, j], axis=1)[fits]
    return mutual_best(pairs, cost[fits], n)


def vetoed_links(u, v, part, index, limbs, limb_at, limb_scores):
    """(len(u),) True where points u and v are the two ends of a limb whose field was scored for
    exactly these two peaks and found not to be a limb (-inf): the field says they are apart."""
    limb = limb_at[part[u], part[v]]
    vetoed = np.zeros(len(u), dtype=bool)
    for k in np.unique(limb[limb >= 0]):
        at = np.nonzero(limb == k)[0]
        u_is_a = part[u[at]] == limbs[k][0]                 # scores are [peak of a, peak of b]
        ends_a = np.where(u_is_a, index[u[at]], index[v[at]])
        ends_b = np.where(u_is_a, index[v[at]], index[u[at]])
        vetoed[at] = ~np.isfinite(limb_scores[k][ends_a, ends_b])
    return vetoed


def mutual_best(pairs, costs, n):
    """Pairs (i, j) where j is i's lowest-cost partner and i is j's."""
    cost = np.full((n, n), np.inf)
    cost[pairs[:, 0], pairs[:, 1]] = costs
    cost[pairs[:, 1], pairs[:, 0]] = costs
    best = cost.argmin(axis=1)
    return [(int(i), int(j)) for i, j in pairs if best[i] == j and best[j] == i]


def merge_pairs(members, totals, pairs):
    """Rows i absorb rows j for every (i, j); the j rows are removed."""
    members, totals = members.copy(), totals.copy()
    gone = np.zeros(len(members), dtype=bool)
    for i, j in pairs:
        members[i] = np.maximum(members[i], members[j])
        totals[i] += totals[j]
        gone[j] = True
    return members[~gone], totals[~gone]
