"""The check that the installed LlamaBoard starts trainings as the training shim relies on
(llmspawner.singleuser.runner_check): the installed llamafactory passes, changed sources fail
with a sentence naming what changed."""

from __future__ import annotations

import logging

import pytest

from llmspawner.singleuser import runner_check

LAUNCH = """
class Runner:
    def _launch(self, data, do_train):
        env = deepcopy(os.environ)
        env["LLAMABOARD_ENABLED"] = "1"
        self.trainer = Popen({argv}, env=env, stderr=PIPE, text=True{extra})
        yield from self.monitor()

    def monitor(self):
        running_log, running_progress, running_info = {reader}(lang, output_path, self.do_train)
"""


def _runner(
    argv='["llamafactory-cli", "train", save_cmd(args)]', extra="", reader="get_trainer_info"
):
    return LAUNCH.format(argv=argv, extra=extra, reader=reader)


def test_the_installed_llamafactory_passes():
    path, runner, constants, version = runner_check.installed_sources()
    assert path.name == "runner.py" and version == runner_check.CHECKED_VERSION
    assert runner_check.runner_source_problems(runner, constants) == []
    assert runner_check.check({}) == []


@pytest.mark.parametrize(
    "source, problem",
    [
        (_runner(), None),
        (
            _runner(argv='[sys.executable, "-m", "llamafactory.cli", "train", p]'),
            "no longer runs ['llamafactory-cli', 'train', <config>] by name",
        ),
        (
            _runner(argv='["/usr/bin/llamafactory-cli", "train", p]'),
            "no longer runs ['llamafactory-cli', 'train', <config>] by name",
        ),
        (_runner(extra=", stdout=PIPE"), "now passes stdout= to Popen"),
        (_runner(extra=", shell=True"), "now passes shell= to Popen"),
        (
            _runner().replace("env = deepcopy(os.environ)", "env = {}"),
            "env= is no longer a copy of os.environ",
        ),
        (_runner(reader="read_pipe"), "Runner.monitor no longer reads progress"),
        ("class Runner:\n    pass\n", "Runner._launch is gone"),
        ("def (", "not Python"),
    ],
)
def test_changed_runners_are_named(source, problem):
    problems = runner_check.runner_source_problems(source)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_changed_progress_files_are_named():
    constants = 'RUNNING_LOG = "running_log.txt"\nTRAINER_LOG = "trainer.jsonl"\n'
    (problem,) = runner_check.runner_source_problems(_runner(), constants)
    assert (
        problem == "extras/constants.py's TRAINER_LOG is 'trainer.jsonl', not 'trainer_log.jsonl'"
    )


def test_a_failed_check_raises_or_warns(monkeypatch, caplog):
    monkeypatch.setattr(
        runner_check,
        "installed_sources",
        lambda: ("/x/runner.py", _runner(extra=", stdout=PIPE"), None, "0.9.9"),
    )
    with pytest.raises(runner_check.RunnerChanged) as info:
        runner_check.check({})
    message = str(info.value)
    assert message.startswith(
        "LlamaBoard does not start trainings the way llmspawner's training shim relies on "
        "(checked against llamafactory 0.9.5): /x/runner.py (llamafactory 0.9.9): "
        "Runner._launch now passes stdout= to Popen"
    )
    assert "llamafactory==0.9.5" in message and "LLMSPAWNER_LLAMABOARD_RUNNER_CHECK=warn" in message
    with caplog.at_level(logging.WARNING):
        assert runner_check.check({runner_check.CHECK_ENV: "warn"}) != []
    assert "stdout=" in caplog.text


def test_no_llamafactory_is_a_failure(monkeypatch):
    monkeypatch.setattr(runner_check.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(runner_check.RunnerChanged, match="is not installed"):
        runner_check.check({})
