"""Every verb answers --help, and the CLI frame stays light (no TensorFlow until a verb runs)."""

import subprocess
import sys

import pytest

from bpnet.cli import VERBS, build_parser, main


@pytest.mark.parametrize("verb", sorted(VERBS))
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: bpnet " + verb in capsys.readouterr().out


def test_help_does_not_import_tensorflow():
    code = "import sys; from bpnet.cli import build_parser; build_parser(); print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_verb_is_rejected(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["fly"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys):
    code = main(["train", "-e", str(tmp_path / "missing.yaml"), "-r", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.yaml" in err and "Traceback" not in err
