"""Several `rlhfkit` runs in one launch, for the tests: `python ppo_runs.py JSON`, JSON a list of argument
lists. The start-up (imports, the process group under torchrun) is paid once; the group is left at the end,
and the process ends as `rlhfkit.cli.main` ends one. Every run goes through `rlhfkit.cli.main` as from the
command line."""

import json
import sys

import rlhfkit.cli as cli
from rlhfkit.runtime.distributed import end_process, finish

cli.finish = lambda: False  # one process group for every run
status = 0
for args in json.loads(sys.argv[1]):
    status = status or cli.main(args)
if finish():  # as cli.main ends a process of several
    end_process(status)
sys.exit(status)
