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
    members = np.asarray(members).copy()
    totals = np.asarray(totals, dtype=np.float32).copy()
    if slack <= 0 or len(members) < 2:
        return members, totals
    need, link, blocked = piece_pairs(members, peaks, limbs, limb_scores, bounds, noise_px)
    heights = np.diag(need).copy()
    alive = np.ones(len(members), dtype=bool)
    while True:
        joined = mutual_best_fits(need, link, blocked, heights, alive, slack, unscaled_height_px)
        if not joined:
            return members[alive], totals[alive]
        for i, j in joined:   # row i absorbs row j; a union's pairs with a third piece are both rows'
            members[i] = np.maximum(members[i], members[j])
            totals[i] += totals[j]
            heights[i] = max(heights[i], heights[j], need[i, j])
            need[i] = need[:, i] = np.maximum(need[i], need[j])
            link[i] = link[:, i] = np.minimum(link[i], link[j])
            blocked[i] = blocked[:, i] = blocked[i] | blocked[j]
            alive[j] = False


def limb_lookup(limbs, num_parts):
    """(P, P) int: index of the limb between two parts (either order), -1 if none."""
    table = np.full((num_parts, num_parts), -1, dtype=np.int64)
    for k, (a, b) in enumerate(limbs):
        table[a, b] = table[b, a] = k
    return table


def piece_points(members, peaks):
    """Every found part of every piece, grouped by piece:
    (piece (T,), part (T,), peak index (T,), xy (T, 2))."""
    piece, part = np.nonzero(members >= 0)
    index = members[piece, part]
    xy = np.zeros((len(piece), 2), dtype=np.float32)
    for p in np.unique(part):
        at = part == p
        xy[at] = peaks[p][index[at], :2]
    return piece, part, index, xy


def piece_pairs(members, peaks, limbs, limb_scores, bounds, noise_px):
    """(n, n) matrices over pieces, from every pair of their found parts:
    need: body height (px) the pairs require (max; the diagonal is each piece's own height);
    link: min of bound x (distance + noise); blocked: a part in both, or a vetoing limb field."""
    piece, part, index, xy = piece_points(members, peaks)
    dist = np.linalg.norm(xy[:, None] - xy[None, :], axis=-1)              # (T, T)
    bound = bounds[part[:, None], part[None, :]]
    known = np.isfinite(bound) & (bound > 0)       # unknown parts (and a point with itself): no constraint
    with np.errstate(invalid="ignore", divide="ignore"):
        need = np.where(known, (dist - noise_px) / bound, 0.0)
    link = np.where(known, bound * (dist + noise_px), np.inf)
    blocked = (part[:, None] == part[None, :]) & (piece[:, None] != piece[None, :])
    u, v = np.triu_indices(len(piece), k=1)
    vetoed = vetoed_links(u, v, part, index, limbs, limb_lookup(limbs, members.shape[1]), limb_scores)
    blocked[u[vetoed], v[vetoed]] = blocked[v[vetoed], u[vetoed]] = True
    starts = np.flatnonzero(np.r_[True, piece[1:] != piece[:-1]])         # points are grouped by piece
    by_piece = lambda reduce, m: reduce.reduceat(reduce.reduceat(m, starts, axis=0), starts, axis=1)  # noqa: E731
    return by_piece(np.maximum, need), by_piece(np.minimum, link), by_piece(np.logical_or, blocked)


def mutual_best_fits(need, link, blocked, heights, alive, slack, unscaled_height_px):
    """Pairs (i, j), i < j, of live pieces that fit (see `join_fragments`) and are each other's
    lowest-cost fitting partner."""
    own = np.maximum(heights[:, None], heights[None, :])
    own = np.where(own > 0, own, unscaled_height_px)
    fits = ~blocked & (need <= slack * own) & alive[:, None] & alive[None, :]
    np.fill_diagonal(fits, False)
    if not fits.any():
        return []
    with np.errstate(invalid="ignore"):       # 0 x inf where a piece has no scale and no bound
        cost = np.where(fits, own * link, np.inf)
    best = cost.argmin(axis=1)
    has = np.isfinite(cost[np.arange(len(cost)), best])
    i = np.flatnonzero(has & (best[best] == np.arange(len(cost))) & (best > np.arange(len(cost))))
    return [(int(a), int(best[a])) for a in i]


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
