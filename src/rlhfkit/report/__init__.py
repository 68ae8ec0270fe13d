"""The static HTML report of a demo run: inline SVG plots (matplotlib) and side-by-side samples."""

from rlhfkit.report.page import write_report

__all__ = ["write_report"]
