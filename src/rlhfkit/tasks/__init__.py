"""Bundled tasks with a programmatic gold reward that plays the human labeler, and scorers: a gold reward or a
monitor as a function or a reward-model folder."""

from rlhfkit.tasks.base import Gold, Task, load_gold
from rlhfkit.tasks.scorers import Scorer, load_monitors, load_scorer, monitor_scores
from rlhfkit.tasks.sentiment import sentiment_task

__all__ = [
    "Gold",
    "Scorer",
    "Task",
    "load_gold",
    "load_monitors",
    "load_scorer",
    "monitor_scores",
    "sentiment_task",
]
