"""TLT's soft-start annealing learning-rate schedule, as a pure function of training progress.

    lr
    ^        _____________________ base
    |       /                     \\
    |      /                       \\
    | ____/                         \\____ min
    +------------------------------------> progress = step / total steps
          soft_start           annealing  1.0

Both ramps are exponential: the rate moves linearly in log space between `min_learning_rate` and
`base_learning_rate`, so it spends as long near 1e-5 as near 1e-4 - the reason TLT uses it.
With `min_learning_rate` 0 there is no log space, so the ramps become linear instead.
"""

import math

from bpnet.errors import BpnetError


def soft_start_annealing_lr(progress, base_lr, min_lr, soft_start, annealing):
    """Learning rate at `progress` in [0, 1] (values outside are clamped)."""
    progress = min(max(float(progress), 0.0), 1.0)
    if progress < soft_start:
        t = progress / soft_start
    elif progress > annealing and annealing < 1.0:
        t = (1.0 - progress) / (1.0 - annealing)
    else:
        t = 1.0
    if t >= 1.0:
        return base_lr   # exactly the configured rate, not exp(log()) round-off
    if min_lr <= 0:
        return base_lr * t
    return math.exp(math.log(min_lr) + t * (math.log(base_lr) - math.log(min_lr)))


def check_schedule(schedule, where="optimizer.learning_rate_schedule"):
    """Cross-field rules the spec model cannot express one field at a time."""
    if schedule.soft_start > schedule.annealing:
        raise BpnetError(f"{where}: soft_start ({schedule.soft_start}) must not be after "
                         f"annealing ({schedule.annealing}); both are fractions of training")
    if schedule.min_learning_rate > schedule.base_learning_rate:
        raise BpnetError(f"{where}: min_learning_rate ({schedule.min_learning_rate}) must not "
                         f"exceed base_learning_rate ({schedule.base_learning_rate})")


def learning_rate_at(step, total_steps, schedule):
    """The rate for global `step` (0-based) of `total_steps`, from a LRScheduleSpec."""
    return soft_start_annealing_lr(step / max(total_steps, 1), schedule.base_learning_rate,
                                   schedule.min_learning_rate, schedule.soft_start,
                                   schedule.annealing)
