"""Cost preview from measured times of past runs."""

import pytest

from bpnet.errors import BpnetError
from bpnet.guide.cost import inference_work, preview_cost, training_work

HISTORY = [
    {"kind": "train", "worker_kind": "cpu", "seconds": 100.0, "work": training_work(100, 1, (256, 256), 2)},
    {"kind": "train", "worker_kind": "cpu", "seconds": 300.0, "work": training_work(100, 3, (256, 256), 2)},
    {"kind": "train", "worker_kind": "gpu", "seconds": 10.0, "work": training_work(100, 1, (256, 256), 2)},
    {"kind": "evaluate", "worker_kind": "cpu", "seconds": 20.0, "work": inference_work(80, (256, 256))},
]


def test_estimates_scale_with_work_and_use_the_same_worker_kind():
    plan = [{"name": "retrain", "kind": "train", "work": training_work(200, 2, (256, 256), 2)},
            {"name": "evaluate", "kind": "evaluate", "work": inference_work(40, (512, 512))}]
    cpu = preview_cost(HISTORY, plan, "cpu")
    assert cpu["stages"][0]["estimate"]["seconds"] == pytest.approx(400.0)
    assert cpu["stages"][1]["estimate"]["seconds"] == pytest.approx(40.0)
    assert cpu["total_seconds"] == pytest.approx(440.0) and cpu["unknown"] == []
    gpu = preview_cost(HISTORY, plan, "gpu")
    assert gpu["stages"][0]["estimate"]["seconds"] == pytest.approx(40.0)
    assert gpu["unknown"] == ["evaluate"] and gpu["stages"][1]["estimate"] is None


def test_bad_history_records_are_named():
    with pytest.raises(BpnetError, match="record 0 has no 'seconds'"):
        preview_cost([{"kind": "train", "worker_kind": "cpu", "work": 1}], [], "cpu")
