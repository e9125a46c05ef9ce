"""The AP-budget search rule on synthetic AP(threshold) curves."""

import math

import pytest

from bpnet.errors import BpnetError
from bpnet.guide.search import SearchConfig, Trial, bracket, choose, next_step, run_search

BASE_AP = 60.0


def cliff(center):
    """AP holds, then drops 30 points around `center` (what retraining after pruning looks like)."""
    return lambda p: 30 / (1 + math.exp(-math.log(p / center) / 0.1))


def smooth(center):
    return lambda p: 2 * math.exp(math.log(p / center))


def noisy(drop, amplitude=0.4):
    # Deterministic "retraining noise": the curve is no longer monotonic.
    return lambda p: max(0.0, drop(p) + amplitude * math.sin(40 * math.log(p)))


def measure_with(drop):
    # Size falls with the threshold, as pruning does.
    return lambda p: Trial(p, BASE_AP - drop(p), size=1e6 / (1 + 10 * p))


def largest_passing_threshold(drop, budget, low=0.05, high=1.0):
    grid = [low * (high / low) ** (i / 4000) for i in range(4001)]
    return max((p for p in grid if drop(p) <= budget), default=None)


CURVES = [cliff(c) for c in (0.07, 0.2, 0.45, 0.9)] + [smooth(c) for c in (0.1, 0.3, 0.8)] \
    + [noisy(cliff(0.3)), noisy(smooth(0.4))]


@pytest.mark.parametrize("drop", CURVES)
@pytest.mark.parametrize("budget", [1.0, 2.0])
def test_search_stays_within_budget_and_iteration_limit(drop, budget):
    config = SearchConfig(base_ap=BASE_AP, budget_ap=budget, max_iters=7)
    chosen, trials, reason = run_search(measure_with(drop), config)
    assert 0 < len(trials) <= config.max_iters
    if drop(0.05) > budget:
        assert chosen is None                     # keep the unpruned model
        return
    assert BASE_AP - chosen.ap <= budget
    assert chosen.size == min(t.size for t in trials if BASE_AP - t.ap <= budget)
    assert reason


@pytest.mark.parametrize("drop", CURVES[:7])
def test_search_converges_near_the_budget_crossing(drop):
    config = SearchConfig(base_ap=BASE_AP, budget_ap=2.0, max_iters=8)
    chosen, trials, reason = run_search(measure_with(drop), config)
    best_possible = largest_passing_threshold(drop, 2.0)
    # Within the bracket tolerance, or using the budget to within ap_tol, before the limit.
    assert chosen.threshold >= best_possible / 1.1 or BASE_AP - chosen.ap >= 2.0 - config.ap_tol \
        or len(trials) == 8
    assert "iteration limit" not in reason or len(trials) == 8


def test_search_never_returns_a_model_over_budget():
    # Even the lowest threshold loses 5 points: nothing pruned is acceptable.
    config = SearchConfig(base_ap=BASE_AP, budget_ap=2.0, max_iters=5)
    chosen, trials, reason = run_search(lambda p: Trial(p, BASE_AP - 5.0, size=1.0), config)
    assert chosen is None
    assert len(trials) == 1 and "unpruned model" in reason


def test_search_stops_at_the_top_when_everything_passes():
    config = SearchConfig(base_ap=BASE_AP, budget_ap=2.0, max_iters=5)
    chosen, trials, reason = run_search(lambda p: Trial(p, BASE_AP - 0.1, size=1 / p), config)
    assert [t.threshold for t in trials] == [0.05, 1.0]
    assert chosen.threshold == 1.0 and "highest threshold" in reason


def test_bracket_ignores_passing_trials_above_a_failure_but_choose_may_take_them():
    config = SearchConfig(base_ap=50, budget_ap=2)
    trials = [Trial(0.05, 49.5, 10), Trial(0.2, 45, 6), Trial(0.4, 49, 4)]
    lo, hi = bracket(trials, config)
    assert (lo.threshold, hi.threshold) == (0.05, 0.2)
    assert choose(trials, config).threshold == 0.4   # measured within budget and smallest
    step = next_step(trials, config)
    assert 0.05 < step.threshold < 0.2


def test_next_step_starts_low_and_respects_the_iteration_limit():
    config = SearchConfig(base_ap=50, budget_ap=2, max_iters=2)
    assert next_step([], config).threshold == 0.05
    trials = [Trial(0.05, 49.9, 10), Trial(1.0, 20, 1)]
    step = next_step(trials, config)
    assert step.threshold is None and "iteration limit" in step.reason


def test_progress_sees_every_trial():
    seen = []
    config = SearchConfig(base_ap=BASE_AP, budget_ap=2.0, max_iters=4)
    _, trials, _ = run_search(measure_with(cliff(0.3)), config, progress=lambda t, s: seen.append(t))
    assert seen == trials


@pytest.mark.parametrize("kwargs, message", [
    ({"budget_ap": -1}, "AP budget"),
    ({"max_iters": 0}, "max_iters"),
    ({"threshold_range": (0.5, 0.1)}, "threshold_range"),
])
def test_bad_search_settings_are_named(kwargs, message):
    with pytest.raises(BpnetError, match=message):
        SearchConfig(**{"base_ap": 50, "budget_ap": 2, **kwargs})
