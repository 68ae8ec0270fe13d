"""A process in a process group ends once its command is over, skipping the interpreter's teardown (where the
gloo backend's threads aborted finished multi-process runs now and then), its output flushed and its status
kept."""

import socket
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import atexit, os, sys
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1")
    if sys.argv[2] == "grouped":
        dist.init_process_group("gloo")
    atexit.register(lambda: print("torn down"))
    print("unflushed", end="")  # a pipe's stdout is block-buffered
    from rlhfkit.cli import main
    status = main(["sft", "--model", "no-such-model-folder", "--data", "no-such-file.jsonl"])
    print(f" main returned {status}, group left: {not dist.is_initialized()}")
    sys.exit(status)
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(grouped: bool) -> subprocess.CompletedProcess:
    mode = "grouped" if grouped else "alone"
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(free_port()), mode], capture_output=True, text=True, timeout=120
    )


def test_a_process_in_a_group_ends_in_main_with_its_status_and_its_output():
    done = run(grouped=True)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "rlhfkit sft: error:" in done.stderr
    assert done.stdout == "unflushed"  # flushed, and neither main's return nor the teardown was reached


def test_a_process_alone_returns_from_main_and_tears_down_as_usual():
    done = run(grouped=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == "unflushed main returned 2, group left: True\ntorn down\n"
