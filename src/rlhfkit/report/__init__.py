"""The static HTML report of a demo run: inline SVG plots (matplotlib) and side-by-side samples; its
over-optimisation section (also the page of `rlhfkit report`) and Gao et al.'s fits."""

from rlhfkit.report.overoptimisation import method_study
from rlhfkit.report.page import write_report

__all__ = ["method_study", "write_report"]
