"""Exceptions the CLI turns into one line and an exit status: UsageError 2, Stopped 128+signal, Diverged 1."""

import signal
from pathlib import Path


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (a library's can run to dozens), or its type's name."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class UsageError(Exception):
    """Bad input: a config value, a path, a dataset row, a model that does not load."""


class ConfigError(UsageError):
    """A config file or override that names an unknown field or gives a value of the wrong type."""


class Stopped(Exception):
    """Raised after a checkpoint was written because SIGINT or SIGTERM arrived."""

    def __init__(self, signum: int, checkpoint: Path) -> None:
        self.signum, self.checkpoint = signum, checkpoint
        super().__init__(f"stopped by {signal.Signals(signum).name} after writing {checkpoint}")


class Diverged(Exception):
    """Too many non-finite updates in a row; the last good state was written as a checkpoint."""


class StepFailed(Exception):
    """User code failed inside a step (a reward function): the run loop checkpoints the last good state and
    stops with status 1 (as `Diverged`)."""


class EnvironmentFailure(Exception):
    """A multi-turn environment failed on an episode (one line: the environment, the call, what went
    wrong); a StepFailed during training, a UsageError at start-up (`rlhfkit.rollout.environments`)."""
