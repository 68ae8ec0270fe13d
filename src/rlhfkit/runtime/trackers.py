"""Experiment trackers through accelerate's tracker API: TensorBoard, Weights & Biases, MLflow, from the main
process, beside the metrics.jsonl that is always written."""

from __future__ import annotations

import importlib.util
import math
from typing import Any

from rlhfkit.config import to_dict
from rlhfkit.errors import UsageError

# `report_to` name -> the package that must be installed for it
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(names: tuple[str, ...]) -> None:
    """A UsageError, before any work, for a tracker whose package is not installed."""
    for name in names:
        package = TRACKER_PACKAGES[name]  # the config only admits these names
        if importlib.util.find_spec(package) is None:
            raise UsageError(
                f"report_to {name} needs the package {package}: pip install {package}"
                + (" (or rlhfkit[tensorboard])" if name == "tensorboard" else "")
            )


def hyperparameters(config: Any) -> dict[str, Any]:
    """The run's config as flat `section.field` hyperparameters of the kinds every tracker takes."""
    flat: dict[str, Any] = {}

    def walk(values: dict[str, Any], prefix: str) -> None:
        for key, value in values.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                plain = isinstance(value, (bool, int, float, str))
                flat[prefix + key] = value if plain else str(value)

    walk(to_dict(config), "")
    return flat


class Trackers:
    """The trackers `report_to` names, started with the run's config as hyperparameters. `accelerator` must
    have been made with `log_with=report_to` (`runtime.process.make_accelerator`)."""

    def __init__(self, accelerator: Any, name: str, config: Any) -> None:
        self.accelerator, self.active = accelerator, bool(config.report_to)
        if self.active:
            accelerator.init_trackers(name, config=hyperparameters(config))

    def log(self, record: dict[str, Any], step: int) -> None:
        """The record's finite numbers, at `step`."""
        if self.active:
            numbers = {
                k: v
                for k, v in record.items()
                if k != "step" and type(v) in (int, float) and math.isfinite(v)
            }
            self.accelerator.log(numbers, step=step)

    def finish(self) -> None:
        """Flush and close the trackers (not `end_training`, which also ends the process group)."""
        for tracker in self.accelerator.trackers if self.active else []:
            tracker.finish()
