"""The guide's verbs, called the way bpnet.cli calls them."""

import argparse
import json

import pytest


def parse(module, argv):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def test_dataset_stats_prints_advice_and_writes_json(coco_mini, tmp_path, capsys):
    from bpnet.commands import dataset_stats

    out = tmp_path / "stats.json"
    assert dataset_stats.run(parse(dataset_stats, ["-a", str(coco_mini[0]), "--aspect", "1.78",
                                                   "--json", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "dataloader.image_shape" in printed and "people 86" in printed
    saved = json.loads(out.read_text())
    assert saved["stats"]["num_people"] == 86
    assert saved["advice"][0]["value"][1] % 16 == 0


@pytest.mark.parametrize("name", ["dataset_stats", "search", "gate"])
def test_every_verb_has_help(name, capsys):
    import importlib

    module = importlib.import_module(f"bpnet.commands.{name}")
    with pytest.raises(SystemExit) as exit_info:
        parse(module, ["--help"])
    assert exit_info.value.code == 0 and "usage" in capsys.readouterr().out
