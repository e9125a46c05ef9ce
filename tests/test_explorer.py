"""Resolution and stages explorer: the grid checks, the latency groups, and one real tiny run."""

import json

import pytest

from bpnet.errors import BpnetError
from bpnet.guide.explorer import check_plan, gain_per_step, latency_by_people, people_bucket


def test_plan_defaults_to_every_stage_exit():
    stages, hws, precisions = check_plan(3, None, [(224, 320), [288, 384]], ["fp32"])
    assert stages == [1, 2, 3]
    assert hws == [(224, 320), (288, 384)]
    assert precisions == ["fp32"]


def test_plan_rejects_a_stage_beyond_the_model():
    with pytest.raises(BpnetError, match=r"stages: \[4\] beyond this model's stages 1..3"):
        check_plan(3, [2, 4], [(288, 384)], ["fp32"])


def test_plan_rejects_a_resolution_not_a_multiple_of_8():
    with pytest.raises(BpnetError, match=r"resolutions\[1\]: H and W must be positive multiples of 8 up to 2048, got 290x384"):
        check_plan(3, None, [(288, 384), (290, 384)], ["fp32"])


def test_plan_rejects_unknown_precision_and_stage_exits_of_onnx():
    with pytest.raises(BpnetError, match="allowed: fp32, fp16, int8"):
        check_plan(2, None, [(64, 64)], ["int4"])
    with pytest.raises(BpnetError, match="ONNX file with one output stage"):
        check_plan(None, [1], [(64, 64)], ["fp32"])
    assert check_plan(None, None, [(64, 64)], ["fp32"])[0] == [None]


@pytest.mark.parametrize("count,label", [(0, "0"), (1, "1"), (2, "2-3"), (3, "2-3"), (4, "4-6"),
                                         (6, "4-6"), (7, "7+"), (30, "7+")])
def test_people_buckets(count, label):
    assert people_bucket(count) == label


def test_latency_by_people_takes_medians_per_group_in_order():
    rows = [{"people": 0, "read": 1.0, "prepare": 1.0, "cnn": 10.0, "decode": 0.1},
            {"people": 5, "read": 1.0, "prepare": 2.0, "cnn": 11.0, "decode": 3.0},
            {"people": 4, "read": 1.0, "prepare": 0.0, "cnn": 9.0, "decode": 2.0},
            {"people": 6, "read": 2.0, "prepare": 2.0, "cnn": 30.0, "decode": 4.0}]
    groups = latency_by_people(rows)
    assert [g["people"] for g in groups] == ["0", "4-6"]
    assert groups[1] == {"people": "4-6", "images": 3, "pre_ms": 3.0, "cnn_ms": 11.0, "decode_ms": 3.0}


def test_gain_per_step_orders_by_size_and_skips_gains_from_zero():
    points = [{"resolution": [288, 384], "stage": 2, "precision": "fp32", "APm": 0.55},
              {"resolution": [224, 320], "stage": 2, "precision": "fp32", "APm": 0.50},
              {"resolution": [320, 448], "stage": 2, "precision": "fp32", "APm": 0.55},
              {"resolution": [224, 320], "stage": 1, "precision": "fp32", "APm": 0.0},
              {"resolution": [288, 384], "stage": 1, "precision": "fp32", "APm": 0.2}]
    steps = gain_per_step(points)
    by_stage = {(s["stage"], tuple(s["from"])): s["gain_pct"] for s in steps}
    assert by_stage == {(1, (224, 320)): None, (2, (224, 320)): 10.0, (2, (288, 384)): 0.0}


@pytest.mark.slow
def test_explorer_measures_every_stage_exit_and_the_oracle(tmp_path, coco_mini):
    from bpnet import cli
    from tests.tiny_models import save_tiny_model

    annotations, images = coco_mini
    model = save_tiny_model(tmp_path / "tiny.hdf5", stages=2)
    spec = tmp_path / "infer.yaml"
    spec.write_text("input_shape: [64, 64]\n")
    out = tmp_path / "explore"
    code = cli.main(["explore", "-m", str(model), "-a", str(annotations), "-i", str(images), "-e", str(spec),
                     "-r", str(out), "--resolutions", "64,64", "64,96", "--precisions", "fp32", "int8",
                     "--max_images", "12"])
    assert code == 0
    report = json.loads((out / "explorer.json").read_text())
    grid = {(tuple(p["resolution"]), p["stage"], p["precision"]) for p in report["points"]}
    assert grid == {(hw, s, p) for hw in ((64, 64), (64, 96)) for s in (1, 2) for p in ("fp32", "int8")}
    assert [o["resolution"] for o in report["oracle"]] == [[64, 64], [64, 96]]
    assert report["calibrator"] == "minmax"        # no model card recommends one: never entropy's clipping
    # The oracle is the decoder's ceiling from perfect maps: it finds people an untrained model does not.
    assert all(o["AP"] > 0.1 for o in report["oracle"])
    for point in report["points"]:
        assert point["cnn_ms"] > 0 and point["latency_ms"] >= point["cnn_ms"]
    groups = report["latency_by_people"][0]["groups"]
    assert sum(g["images"] for g in groups) == report["num_images"] == 12
    assert "bundled coco-mini" in report["note"]
    # docs/explorer.md's tables are rendered from such a report
    from bench.explorer_report import gain_table, people_table, point_table

    rows = point_table(report)
    assert len(rows) == 2 + 2 + 8 and rows[2].startswith("| 64×64 | **oracle** (ceiling) |")
    assert len(gain_table(report)) == 2 + 2 and len(people_table(report)) > 2


def test_explorer_refuses_a_stage_exit_beyond_the_model_before_any_work(tmp_path, coco_mini, capsys):
    from bpnet import cli
    from tests.tiny_models import save_tiny_model

    annotations, images = coco_mini
    model = save_tiny_model(tmp_path / "tiny.hdf5", stages=2)
    spec = tmp_path / "infer.yaml"
    spec.write_text("input_shape: [64, 64]\n")
    code = cli.main(["explore", "-m", str(model), "-a", str(annotations), "-i", str(images), "-e", str(spec),
                     "-r", str(tmp_path / "out"), "--stages", "3"])
    assert code == 2
    assert "stages: [3] beyond this model's stages 1..2" in capsys.readouterr().err
    assert not (tmp_path / "out" / "explorer.json").exists()


def _report():
    points = [{"resolution": hw, "stage": s, "precision": p, "AP": ap, "APm": ap, "APl": ap + 0.1,
               "AP50": ap, "pre_ms": 1.0, "cnn_ms": 10.0 * s, "decode_ms": 2.0, "latency_ms": 3.0 + 10.0 * s,
               "model_file": "m.onnx"}
              for hw, base in (([224, 320], 0.3), ([288, 384], 0.4)) for s in (1, 2)
              for p, ap in (("fp32", base + 0.05 * s), ("int8", base + 0.05 * s - 0.01))]
    oracle = [{"resolution": [224, 320], "AP": 0.8, "APm": 0.7, "APl": 0.9, "AP50": 0.9},
              {"resolution": [288, 384], "AP": 0.9, "APm": 0.85, "APl": 0.92, "AP50": 0.95}]
    groups = [{"people": "0", "images": 3, "pre_ms": 1.0, "cnn_ms": 10.0, "decode_ms": 0.1},
              {"people": "2-3", "images": 2, "pre_ms": 1.0, "cnn_ms": 10.0, "decode_ms": 2.5}]
    return {"points": points, "oracle": oracle, "apm_gain_per_step": gain_per_step(points),
            "latency_by_people": [{"resolution": [288, 384], "stage": 2, "precision": "fp32", "groups": groups}]}


def test_explorer_charts_show_every_point_and_the_oracle_ceiling():
    from app import explorer_charts as charts

    report = _report()
    fig = charts.ap_vs_latency(report)
    assert sum(len(t.x) for t in fig.data) == len(report["points"]) == 8
    ceilings = sorted(shape.y0 for shape in fig.layout.shapes)
    assert ceilings == [0.8, 0.9]
    assert fig.layout.yaxis.range[0] == 0
    rows = charts.table_rows(report)
    assert [r["stage exit"] for r in rows[:5]] == ["oracle (ceiling)", "stage 1", "stage 1", "stage 2", "stage 2"]
    bars = charts.latency_by_people(report, [288, 384], 2, "fp32")
    assert [t.name for t in bars.data] == ["pre-processing", "CNN", "decoding"]
    assert list(bars.data[2].y) == [0.1, 2.5]
    assert len(charts.latency_by_people(report, [224, 320], 2, "fp32").data) == 0
    by_res = charts.ap_by_resolution(report)
    assert len(by_res.data) == 4  # AP medium + AP large for each of the two stage exits
    assert charts.gain_rows(report)[0]["gain %"] == round(100 * 0.1 / 0.35, 1)
