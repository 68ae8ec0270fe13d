"""A process in a process group ends once its command is over: its exit handlers run, its output is flushed,
its status kept, but the interpreter's teardown is skipped (where the gloo backend's threads aborted finished
multi-process runs now and then)."""

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
    atexit.register(lambda: print(" exit handlers", end=""))
    class Teardown:
        def __del__(self):
            print(" torn down", end="")
    kept_until_teardown = Teardown()
    print("unflushed", end="")  # a pipe's stdout is block-buffered
    from rlhfkit.cli import main
    status = main(["sft", "--model", "no-such-model-folder", "--data", "no-such-file.jsonl"])
    print(f" main returned {status}, group left: {not dist.is_initialized()}", end="")
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
    assert done.stdout == "unflushed exit handlers"  # flushed; main did not return, nor the teardown run


def test_a_process_alone_returns_from_main_and_tears_down_as_usual():
    done = run(grouped=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == "unflushed main returned 2, group left: True exit handlers torn down"
