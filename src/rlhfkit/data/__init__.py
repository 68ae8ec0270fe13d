"""Datasets: reading (JSONL, Parquet, `datasets` folders, hub names), validation, tokenising, padding."""

from rlhfkit.data.collate import pad
from rlhfkit.data.encode import IGNORE, PairExample, SFTExample, encode_pairs, encode_prompts, encode_sft
from rlhfkit.data.schema import load_records, validate_row
from rlhfkit.data.sources import Row, read_rows

__all__ = [
    "IGNORE",
    "PairExample",
    "Row",
    "SFTExample",
    "encode_pairs",
    "encode_prompts",
    "encode_sft",
    "load_records",
    "pad",
    "read_rows",
    "validate_row",
]
