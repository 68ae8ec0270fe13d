"""Bundled tasks with a programmatic gold reward that plays the human labeler."""

from rlhfkit.tasks.base import Gold, Task, load_gold
from rlhfkit.tasks.sentiment import sentiment_task

__all__ = ["Gold", "Task", "load_gold", "sentiment_task"]
