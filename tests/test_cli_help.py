"""`ctrkit <command> --help` explains every argument, and the names it lists (tables, presets,
models) are the ones the library has."""
from __future__ import annotations

import argparse
import re

import pytest

from ctrkit import cli, models
from ctrkit.analysis import tables
from ctrkit.training import presets


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _help(command: str, dest: str) -> str:
    return next(a.help for a in _commands()[command]._actions if a.dest == dest)


def _listed(text: str) -> set[str]:
    """The comma/or-separated names in a help text ("a, b or c (default a)" -> {a, b, c})."""
    text = re.sub(r"\(.*?\)", "", text.split(":")[-1])
    return {w.strip() for w in re.split(r",|\bor\b", text) if w.strip()}


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_argument_of_every_command_has_help(command):
    parser = _commands()[command]
    missing = [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
               if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == [], f"ctrkit {command}: arguments without help: {missing}"
    parser.format_help()  # a help text with a stray % breaks argparse's formatting


def test_the_table_names_in_the_help_are_the_tables_that_exist():
    assert _listed(_help("table", "name")) == set(tables.NAMES)


def test_the_presets_and_models_in_the_help_are_the_ones_the_library_has():
    assert _listed(_help("pretrain", "preset").replace("the BARS winners", "")) == set(presets.names())
    assert _listed(_help("pretrain", "model")) == set(models.MODELS)


@pytest.mark.parametrize("argv, says", [
    (["reproduce", "--profile", "bogus"], "reproduce: argument --profile: invalid choice: 'bogus'"),
    (["pretrain", "--data", "d", "--model", "DeepFM", "--seeds", "-1,2"], "--flag=VALUE"),
    (["bogus"], "argument command: invalid choice: 'bogus'"),
    ([], "required: command"),
])
def test_a_flag_argparse_refuses_is_one_error_line_and_exit_2(capsys, argv, says):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and err.startswith("ctrkit: error: ") and says in err
    assert "usage:" not in err


def test_version_is_the_package_version(capsys):
    import ctrkit

    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"ctrkit {ctrkit.__version__}"
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()  # (tomllib: Python 3.11+)
    assert re.findall(r'^version = "([^"]+)"$', text, re.M) == [ctrkit.__version__]  # the two places agree
