"""`bpnet bench --end_to_end` (image files -> COCO keypoints, stages pipelined) and the machine
description every benchmark records (bpnet.machine)."""

import json

import pytest

from bpnet.machine import best_int8_path, cpu_flags, cpu_line, cpu_model, describe_cpu, instruction_sets, under_load
from tests.conftest import COCO_IMAGES

ZEN3 = "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse sse2 avx avx2 fma bmi2\n"
EPYC_VNNI = "model name\t: AMD EPYC\nflags\t\t: avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n"
SAPPHIRE = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 fma avx512f avx512_vnni amx_bf16 amx_int8 amx_tile\n"


def test_instruction_sets_name_what_int8_speed_depends_on():
    assert instruction_sets(cpu_flags(ZEN3)) == ["AVX2", "FMA"] and best_int8_path(["AVX2", "FMA"]) == "AVX2"
    isa = instruction_sets(cpu_flags(EPYC_VNNI))
    assert isa == ["AVX2", "FMA", "AVX-512", "AVX-512 VNNI", "AVX-512 BF16"] and best_int8_path(isa) == "AVX-512 VNNI"
    assert best_int8_path(instruction_sets(cpu_flags(SAPPHIRE))) == "AMX-INT8"
    assert cpu_model(ZEN3) == "AMD EPYC 7B13" and cpu_flags("no flags here") == set()


def test_describe_cpu_records_threads_and_load(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN3)
    described = describe_cpu(threads=1, cpuinfo_path=info)
    assert described["cpu"] == "AMD EPYC 7B13" and described["int8_path"] == "AVX2" and described["threads"] == 1
    assert len(described["load_average"]) == 3 and described["logical_cores"] >= 1
    line = cpu_line(described)
    assert "AMD EPYC 7B13" in line and "1 thread," in line and "load average" in line
    assert describe_cpu(cpuinfo_path=tmp_path / "missing")["instruction_sets"] == []


def test_under_load_means_more_runnable_tasks_than_cores():
    # a 2-thread benchmark on 2 idle cores reads a load of about 2 by itself
    assert not under_load({"load_average": [1.9, 1.0, 0.5], "logical_cores": 2})
    assert under_load({"load_average": [2.5, 1.0, 0.5], "logical_cores": 2})
    assert "UNDER LOAD" in cpu_line({"cpu": "x", "int8_path": "AVX2", "instruction_sets": ["AVX2"], "logical_cores": 2,
                                     "threads": 2, "load_average": [9.0, 9.0, 9.0]})
    assert not under_load({"load_average": None, "logical_cores": 2})


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    from bpnet.export import export_onnx
    from tests.tiny_models import save_tiny_model

    folder = tmp_path_factory.mktemp("e2e")
    model = save_tiny_model(folder / "tiny.hdf5", stages=2, seed=3, bias=0.01)
    export_onnx(model, folder / "tiny.onnx", (64, 64))
    return folder / "tiny.onnx"


def spec_64():
    from bpnet.specs import InferSpec

    # A low threshold so the untrained tiny model finds "people" and decode has work to do.
    return InferSpec(input_shape=(64, 64), heatmap_threshold=0.0, paf_threshold=0.0, min_parts=1,
                     min_person_score=0.0, paf_min_positive_fraction=0.0)


@pytest.mark.slow
def test_pipelined_and_sequential_runs_see_the_same_images_and_people(tiny_onnx):
    from bpnet.benchmark import benchmark_end_to_end

    runs = [benchmark_end_to_end(tiny_onnx, COCO_IMAGES, spec_64(), threads=1, max_images=6, pipelined=p)
            for p in (True, False)]
    for result in runs:
        assert result["images"] == 6 and result["images_per_s"] > 0 and result["precision"] == "fp32"
        assert set(result["ms_per_image"]) == {"read", "prepare", "cnn", "decode"}
        assert all(v > 0 for v in result["ms_per_image"].values())
        assert sum(row["images"] for row in result["by_people"]) == 6
        assert result["machine"]["threads"] == 1 and result["machine"]["instruction_sets"] is not None
    assert runs[0]["pipelined"] and not runs[1]["pipelined"]
    assert runs[0]["people_found"] == runs[1]["people_found"] > 0
    assert [r["people"] for r in runs[0]["by_people"]] == [r["people"] for r in runs[1]["by_people"]]


def test_people_split_bins():
    from bpnet.benchmark import people_split

    records = [{"people": n, "read_ms": 1.0, "prepare_ms": 2.0, "cnn_ms": 3.0, "decode_ms": float(n)}
               for n in (0, 0, 1, 3, 9)]
    rows = people_split(records)
    assert [(r["people"], r["images"]) for r in rows] == [("0", 2), ("1", 1), ("2-3", 1), ("8+", 1)]
    assert rows[-1]["decode_ms"] == 9.0


@pytest.mark.slow
def test_bench_verb_end_to_end(tiny_onnx, tmp_path, capsys):
    from bpnet.cli import main

    out = tmp_path / "e2e.json"
    assert main(["bench", "-m", str(tiny_onnx), "--end_to_end", "-d", "64,64", "--images", str(COCO_IMAGES),
                 "--max_images", "3", "--threads", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "images/s (image file -> COCO keypoints)" in printed and "machine: " in printed and "decode" in printed
    assert json.loads(out.read_text())["images"] == 3
    assert main(["bench", "-m", str(tiny_onnx), "--end_to_end", "--max_images", "0"]) == 2
    assert "--max_images: 0" in capsys.readouterr().err


@pytest.mark.slow
def test_end_to_end_prepares_images_as_the_model_card_says(tiny_onnx, tmp_path):
    """An imported network is fed its card's preprocessing (the bundled tf-pose card: raw BGR
    pixels), not the spec's default x / 256 - 0.5, or it finds nobody."""
    import onnx

    from bpnet.benchmark import benchmark_end_to_end
    from bpnet.imports.card import bgr_normalization, load_card, set_onnx_card
    from tests.conftest import ROOT

    card = load_card(ROOT / "data" / "models" / "mobilenet_v2_pose_dm14_368_432_weight_quant.card.yaml")
    with_card = tmp_path / "tiny_with_card.onnx"
    onnx.save(set_onnx_card(onnx.load(str(tiny_onnx)), card), str(with_card))
    expected = bgr_normalization(card)
    for model, scale, offset in ((with_card, expected.image_scale, expected.image_offset),
                                 (tiny_onnx, spec_64().normalization.image_scale, spec_64().normalization.image_offset)):
        result = benchmark_end_to_end(model, COCO_IMAGES, spec_64(), threads=1, max_images=1, pipelined=False)
        assert result["normalization"] == {"image_scale": list(scale), "image_offset": list(offset)}
    assert list(expected.image_offset) != list(spec_64().normalization.image_offset)
