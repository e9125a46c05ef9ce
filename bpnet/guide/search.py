"""AP-budget search: the largest prune threshold whose retrained model stays within the budget.

The pure part (this module's top half) decides, from the trials measured so far, which threshold
to try next and when to stop; it never chooses a model outside the budget. The loop that prunes,
retrains and evaluates per trial is in `bpnet.guide.search_run` (it needs TensorFlow).

Why the rule looks like this: after retraining, AP falls slowly with the threshold and then
drops off a cliff once layers lose the filters they need, while the model size falls steadily.
So the search brackets the budget crossing in log-threshold space (thresholds span two decades)
and narrows it with a safeguarded interpolation: the interpolated point is kept within the
middle half of the bracket, so every step shrinks the bracket by a quarter or more even on a
cliff, and lands next to the crossing in one or two steps where the AP curve is smooth.
"""

import math
from dataclasses import dataclass, field

from bpnet.errors import BpnetError
from bpnet.limits import DEFAULT_SEARCH_ITERS, DEFAULT_SEARCH_THRESHOLD_RANGE

DEFAULT_THRESHOLD_RANGE = DEFAULT_SEARCH_THRESHOLD_RANGE
SAFEGUARD = 0.25             # the next point stays this far (in log space) inside the bracket
SIGNIFICANT_DIGITS = 3       # thresholds are rounded so trial folders and reports read well


@dataclass(frozen=True)
class Trial:
    """One measured iteration: a threshold, its retrained AP (points) and size (objective)."""
    threshold: float
    ap: float
    size: float
    artifacts: dict = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class SearchConfig:
    base_ap: float                     # AP points of the unpruned model on the same evaluation
    budget_ap: float                   # the largest AP drop (points) the user accepts
    threshold_range: tuple = DEFAULT_THRESHOLD_RANGE
    max_iters: int = DEFAULT_SEARCH_ITERS
    threshold_rel_tol: float = 0.1     # stop when the bracket's hi / lo is below 1 + this
    ap_tol: float = 0.25               # stop when a trial uses the budget up to this many points

    def __post_init__(self):
        low, high = self.threshold_range
        if not 0 < low < high:
            raise BpnetError(f"search threshold_range must be 0 < low < high, got {self.threshold_range}")
        if self.budget_ap < 0:
            raise BpnetError(f"AP budget must be >= 0 points, got {self.budget_ap}")
        if self.max_iters < 1:
            raise BpnetError(f"max_iters must be >= 1, got {self.max_iters}")


@dataclass(frozen=True)
class Step:
    """The search's decision: try `threshold` next, or stop (threshold None), and why."""
    threshold: float | None
    reason: str


def ap_drop(trial, config):
    return config.base_ap - trial.ap


def within_budget(trial, config):
    # A tiny epsilon so a drop equal to the budget (up to float noise) counts as within it.
    return ap_drop(trial, config) <= config.budget_ap + 1e-9


def bracket(trials, config):
    """(lo, hi): the highest passing trial below the lowest failing one, and that failing one.

    Either may be None. A passing trial above a failing one (retraining noise) is ignored here
    but can still be chosen as the result, because it was measured within the budget.
    """
    failing = [t for t in trials if not within_budget(t, config)]
    hi = min(failing, key=lambda t: t.threshold) if failing else None
    passing = [t for t in trials if within_budget(t, config) and (hi is None or t.threshold < hi.threshold)]
    lo = max(passing, key=lambda t: t.threshold) if passing else None
    return lo, hi


def round_threshold(value):
    return float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def interpolate_log(lo, hi, config):
    """Threshold where the AP drop reaches the budget, linear in log-threshold, safeguarded."""
    x_lo, x_hi = math.log(lo.threshold), math.log(hi.threshold)
    f_lo, f_hi = ap_drop(lo, config) - config.budget_ap, ap_drop(hi, config) - config.budget_ap
    fraction = -f_lo / (f_hi - f_lo) if f_hi > f_lo else 0.5
    fraction = min(max(fraction, SAFEGUARD), 1 - SAFEGUARD)
    return math.exp(x_lo + fraction * (x_hi - x_lo))


def next_step(trials, config):
    """Which threshold to try next (or why to stop), from the trials measured so far."""
    low, high = config.threshold_range
    if len(trials) >= config.max_iters:
        return Step(None, f"iteration limit reached ({config.max_iters})")
    if not trials:
        return Step(round_threshold(low), f"start at the lowest threshold {low:g} (the seed's advice)")
    lo, hi = bracket(trials, config)
    if lo is None:
        lowest = min(t.threshold for t in trials)
        if lowest <= low * (1 + 1e-6):
            return Step(None, f"even threshold {lowest:g} loses more than {config.budget_ap:g} AP points; "
                              f"the unpruned model is the only one within the budget")
        return Step(round_threshold(math.sqrt(low * lowest)), "every trial so far is over budget: go lower")
    if hi is None:
        if lo.threshold >= high * (1 - 1e-6):
            return Step(None, f"the highest threshold {high:g} stays within the budget")
        return Step(round_threshold(high), "every trial so far is within budget: try the highest threshold")
    if hi.threshold / lo.threshold <= 1 + config.threshold_rel_tol:
        return Step(None, f"thresholds {lo.threshold:g} (within budget) and {hi.threshold:g} (over) are "
                          f"within {config.threshold_rel_tol:.0%} of each other")
    if config.budget_ap - ap_drop(lo, config) <= config.ap_tol:
        return Step(None, f"threshold {lo.threshold:g} uses the budget to within {config.ap_tol:g} AP points")
    candidate = round_threshold(interpolate_log(lo, hi, config))
    if any(math.isclose(candidate, t.threshold) for t in trials):
        return Step(None, "the bracket cannot be narrowed further at 3 significant digits")
    return Step(candidate, f"between {lo.threshold:g} (drop {ap_drop(lo, config):.2f}) and "
                           f"{hi.threshold:g} (drop {ap_drop(hi, config):.2f}), aiming at the budget")


def choose(trials, config):
    """The smallest model within the budget (ties: the higher AP), or None = keep the unpruned one."""
    passing = [t for t in trials if within_budget(t, config)]
    if not passing:
        return None
    return min(passing, key=lambda t: (t.size, -t.ap))


def run_search(measure, config, progress=None):
    """Drive the search: `measure(threshold) -> Trial` runs one prune/retrain/evaluate iteration.

    Calls `progress(trial, step)` after each measurement (the trial just measured and the next
    decision). Returns (chosen trial or None, all trials, the stopping reason).
    """
    trials = []
    step = next_step(trials, config)
    while step.threshold is not None:
        trials.append(measure(step.threshold))
        step = next_step(trials, config)
        if progress is not None:
            progress(trials[-1], step)
    return choose(trials, config), trials, step.reason
