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
    import rlhfkit.cli
    if sys.argv[3] == "crash":
        rlhfkit.cli.run_command = lambda argv: 1 / 0  # a failure rlhfkit does not expect
    status = rlhfkit.cli.main(["sft", "--model", "no-such-model-folder", "--data", "no-such-file.jsonl"])
    print(f" main returned {status}, group left: {not dist.is_initialized()}", end="")
    sys.exit(status)
    """
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(grouped: bool, crash: bool = False) -> subprocess.CompletedProcess:
    mode, command = "grouped" if grouped else "alone", "crash" if crash else "refused"
    return subprocess.run(
        [sys.executable, "-c", SCRIPT, str(free_port()), mode, command],
        capture_output=True,
        text=True,
        timeout=120,
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


def test_a_process_in_a_group_that_crashes_prints_its_traceback_and_ends_with_status_1():
    done = run(grouped=True, crash=True)
    assert done.returncode == 1
    assert "Traceback" in done.stderr and done.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert done.stdout == "unflushed exit handlers"


def test_a_process_alone_that_crashes_raises_out_of_main():
    done = run(grouped=False, crash=True)
    assert done.returncode == 1 and done.stderr.rstrip().endswith("ZeroDivisionError: division by zero")
    assert done.stdout == "unflushed exit handlers torn down"
