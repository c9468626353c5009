"""The ``llmspawner`` dispatcher: a subcommand whose extra is not installed."""

import pytest

from llmspawner import cli


def test_command_without_its_extra_is_listed_and_says_what_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("llmspawner.no_such_module", "a ghost command"))
    assert "ghost     a ghost command" in cli.build_parser().format_help()
    assert cli.main(["ghost", "--any", "option"]) == 2
    assert capsys.readouterr().err == (
        "llmspawner ghost: not available in this installation (No module named "
        "'llmspawner.no_such_module'); install the llmspawner extra that provides it "
        "(pyproject.toml: [project.optional-dependencies])\n"
    )


def test_other_commands_still_check_their_arguments(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("llmspawner.no_such_module", "a ghost command"))
    with pytest.raises(SystemExit) as e:
        cli.main(["deploy", "check", "--bogus"])
    assert e.value.code == 2
    assert capsys.readouterr().err.endswith("error: unrecognized arguments: --bogus\n")


def test_a_devtools_command_without_devtools_says_where_it_comes_from(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("llmspawner_dev.no_such_module", "dev ghost"))
    assert cli.main(["ghost"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llmspawner ghost: not available in this installation (No module")
    assert err.endswith(f"; {cli.DEVTOOLS_HINT}\n")
