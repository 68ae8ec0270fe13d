"""A multi-process launch is refused with a clear message until the trainers support it."""

import subprocess
import sys

from helpers import sentiment_rows, write_jsonl


def test_torchrun_with_two_processes_is_refused(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "sft.jsonl", sentiment_rows(16))
    out = tmp_path / "out"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "rlhfkit.cli",
            "sft",
            "--model",
            tiny_dir,
            "--data",
            data,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "launched as 2 processes; multi-process training is not supported yet" in done.stderr
    assert not out.exists()
