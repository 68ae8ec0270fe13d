"""`rlhfkit {sft,rm,dpo,label,ppo,eval,demo,demo-multiturn,report}`: thin wrappers over the Python API, a
config class each.

Exit status: 0 done, 2 bad input (one line, no traceback), 130/143 stopped by a signal, 1 anything else.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from rlhfkit import __version__
from rlhfkit.config import COMMAND_CONFIGS, DemoConfig, describe, load_config, preset
from rlhfkit.errors import Diverged, Stopped, UsageError
from rlhfkit.runtime.distributed import barrier, end_process, finish, is_main, world

# Config fields that also get a --flag of their own (the rest are set with field=value or --config).
# A list field's flag is singular and repeatable: `--reward-function a:f --reward-function b:g`.
REPEATED = {"reward_functions": "--reward-function"}
FLAGS: dict[str, tuple[str, ...]] = {
    "sft": ("model", "data", "out", "max_steps", "epochs", "overwrite", "resume"),
    "rm": ("model", "data", "out", "max_steps", "epochs", "overwrite", "resume"),
    "dpo": (
        "model",
        "data",
        "prompts",
        "reward_model",
        "reward_functions",
        "out",
        "max_steps",
        "epochs",
        "overwrite",
        "resume",
    ),
    "label": ("policy", "prompts", "gold", "out", "overwrite", "best_of"),
    "ppo": (
        "policy",
        "reward_model",
        "reward_functions",
        "environment",
        "prompts",
        "out",
        "max_steps",
        "overwrite",
        "resume",
    ),
    "eval": (
        "model",
        "prompts",
        "reward_model",
        "reward_functions",
        "gold",
        "reference",
        "environment",
        "out",
        "best_of",
    ),
    "demo": ("out", "preset", "seed", "algorithms", "overwrite"),
    "demo-multiturn": ("out", "seed", "overwrite"),
    "report": ("runs", "out"),
}

SUMMARIES = {
    "sft": "stage 1: supervised fine-tuning on demonstrations",
    "rm": "stage 2: train a reward model on preference pairs",
    "dpo": "DPO on preference pairs (--data), or online DPO on sampled responses (--prompts)",
    "label": "sample response pairs and label them with a programmatic gold reward",
    "ppo": "stage 3: PPO against a reward model, KL-penalised towards the SFT model",
    "eval": "evaluate a model: reward, KL to a reference, length, stop rate",
    "demo": "the whole pipeline on the bundled simulated-human task, with a report",
    "demo-multiturn": "a multi-turn game (guess my number) learnt with PPO from its environment's rewards",
    "report": "over-optimisation charts (gold and proxy against KL) of finished runs, as one HTML page",
}


def announce(text: str) -> None:
    """A result line, printed once however many processes run."""
    if is_main():
        print(text)


def run_demo(config: DemoConfig) -> int:
    from rlhfkit.jobs.demo import demo

    out = demo(config)
    summary = json.loads((out / "summary.json").read_text())
    first = summary["algorithm"]  # the first algorithm's results are named after it
    print(
        f"rlhfkit demo: gold reward {summary['gold_reward_sft']:+.3f} (SFT) -> "
        f"{summary[f'gold_reward_{first}']:+.3f} "
        f"({first.upper()}) at KL {summary['kl_to_sft']:.2f}; RM accuracy "
        f"{summary['rm_accuracy']:.1%}; {summary['wall_seconds'] / 60:.1f} min"
    )
    for name, run in list(summary["algorithms"].items())[1:]:
        print(
            f"rlhfkit demo: {name.upper()}: gold reward {run['gold_reward']:+.3f} at KL "
            f"{run['kl_to_sft']:.2f}; trained in {run['train_seconds']:.0f} s"
        )
    print(f"rlhfkit demo: open {out / 'report.html'}")
    return 0


def run_demo_multiturn(config: Any) -> int:
    from rlhfkit.jobs.multiturn import demo_multiturn

    out = demo_multiturn(config)
    summary = json.loads((out / "summary.json").read_text())
    print(
        f"rlhfkit demo-multiturn: success {summary['success_sft']:.1%} (SFT) -> {summary['success_ppo']:.1%} "
        f"(PPO) on {config.eval_episodes} held-out games, {summary['turns_sft']:.2f} -> "
        f"{summary['turns_ppo']:.2f} turns per game, KL {summary['kl_to_sft']:.2f}; "
        f"{summary['wall_seconds'] / 60:.1f} min; {out / 'summary.json'}"
    )
    return 0


def run_sft(config: Any) -> int:
    from rlhfkit.algorithms.sft import sft

    announce(f"rlhfkit sft: model written to {sft(config)}")
    return 0


def run_label(config: Any) -> int:
    from rlhfkit.jobs.label import label

    stats = label(config)
    if config.best_of:
        print(
            f"rlhfkit label: best of {config.best_of} for {stats['rows']} prompts written to {config.out} "
            f"as SFT rows (gold {stats['gold_sampled']:.3f} sampled -> {stats['gold_kept']:.3f} kept; "
            f"{stats['unfinished']} kept without a stop)"
        )
        return 0
    print(
        f"rlhfkit label: {stats['pairs']} pairs written to {config.out} "
        f"({stats['ties_skipped']} ties skipped, "
        f"label agreement with gold {stats['label_agreement']:.1%})"
    )
    return 0


def run_eval(config: Any) -> int:
    from rlhfkit.jobs.evaluate import evaluate

    print(json.dumps(evaluate(config)["metrics"], indent=2))
    return 0


def run_rm(config: Any) -> int:
    from rlhfkit.algorithms.reward import train_reward_model

    announce(f"rlhfkit rm: reward model written to {train_reward_model(config)}")
    return 0


def run_dpo(config: Any) -> int:
    from rlhfkit.algorithms.dpo import dpo

    announce(f"rlhfkit dpo: model written to {dpo(config)}")
    return 0


def run_ppo(config: Any) -> int:
    from rlhfkit.algorithms.ppo import ppo

    announce(f"rlhfkit ppo: actor and critic written to {ppo(config)}")
    return 0


def run_report(config: Any) -> int:
    from rlhfkit.jobs.report import report

    print(f"rlhfkit report: open {report(config)}")
    return 0


RUNNERS: dict[str, Callable[[Any], int]] = {
    "sft": run_sft,
    "rm": run_rm,
    "dpo": run_dpo,
    "label": run_label,
    "ppo": run_ppo,
    "eval": run_eval,
    "demo": run_demo,
    "demo-multiturn": run_demo_multiturn,
    "report": run_report,
}


def show_warnings(command: str) -> None:
    """The package's warnings (rows truncated or dropped, ...) as `rlhfkit CMD: warning: ...` on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"rlhfkit {command}: %(levelname)s: %(message)s"))
    logger = logging.getLogger("rlhfkit")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    """`rlhfkit` with a sub-parser per command: `--help`, `--version`, and the messages for a missing or
    unknown command. A command's own arguments are parsed by `command_parser` (see `parse_arguments`)."""
    parser = argparse.ArgumentParser(
        prog="rlhfkit", description="RLHF the InstructGPT way: SFT, reward model, PPO."
    )
    parser.add_argument("--version", action="version", version=f"rlhfkit {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_CONFIGS:
        command_parser(name, commands)
    return parser


def command_parser(name: str, commands: Any = None) -> argparse.ArgumentParser:
    """The parser of `rlhfkit NAME`: added to the sub-parsers `commands` when given, else standalone with the
    same prog, help and arguments."""
    settings: dict[str, Any] = {
        "description": f"{SUMMARIES[name]}.",
        "formatter_class": argparse.RawDescriptionHelpFormatter,
        "epilog": "config fields (set them in --config FILE.yaml or as field=value):\n"
        + "\n".join(describe(COMMAND_CONFIGS[name])),
    }
    if commands is not None:
        sub = commands.add_parser(name, help=SUMMARIES[name], **settings)
    else:
        sub = argparse.ArgumentParser(prog=f"rlhfkit {name}", **settings)
    sub.add_argument("--config", metavar="FILE.yaml", help="YAML file of config fields")
    for field_name in FLAGS[name]:
        flag = "--" + field_name.replace("_", "-")
        if field_name == "runs":  # `rlhfkit report RUN [RUN ...]`; see `parse_arguments`
            sub.add_argument("runs", nargs="*", default=None, metavar="RUN", help="see `runs` below")
        elif field_name in ("overwrite", "resume"):
            sub.add_argument(flag, action="store_true", default=None, help=f"see `{field_name}` below")
        elif field_name in REPEATED:
            sub.add_argument(
                REPEATED[field_name],
                dest=field_name,
                action="append",
                metavar="MODULE:FUNCTION",
                help=f"adds to `{field_name}` (repeatable; see below)",
            )
        else:
            sub.add_argument(
                flag, dest=field_name, metavar=field_name.upper(), help=f"sets `{field_name}` (see below)"
            )
    sub.add_argument(
        "overrides",
        nargs="*",
        metavar="field=value",
        help="config overrides, dotted for sections, anywhere among the options",
    )
    return sub


def parse_arguments(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command and its arguments, `field=value` overrides anywhere among the options
    (`ppo --policy P max_steps=1 --prompts F batch_size=8`): the command's parser parses them intermixed.
    Argparse parses sub-parsers' positionals only up to the next option, and refuses intermixed parsing
    with sub-parsers, so the command (the first argument) picks its parser here."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMAND_CONFIGS:  # --help, --version, no or an unknown command
        return build_parser().parse_args(argv)
    args = command_parser(argv[0]).parse_intermixed_args(argv[1:])
    if hasattr(args, "runs"):  # the first positional takes them all: field=value ones are overrides
        args.overrides += [a for a in args.runs or () if "=" in a]
        args.runs = [a for a in args.runs or () if "=" not in a] or None  # none: the --config file's
    args.command = argv[0]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """`rlhfkit ARGV`: its exit status. A process launched as one of several ends here once its command is
    over, failed or not (runtime.distributed.end_process): the interpreter's teardown aborted finished runs
    now and then."""
    try:
        status = run_command(argv)
    except Exception:
        if finish():  # one of several processes: its traceback, as the interpreter prints it, and status 1
            traceback.print_exc()
            end_process(1)
        raise
    except BaseException:
        finish()
        raise
    if finish():  # leave the process group, if any
        end_process(status)
    return status


def run_command(argv: Sequence[str] | None) -> int:
    args = parse_arguments(argv)
    flags = {name: getattr(args, name) for name in FLAGS[args.command]}
    show_warnings(args.command)
    try:
        cls = COMMAND_CONFIGS[args.command]
        config = load_config(cls, args.config, args.overrides, **flags)
        if isinstance(config, DemoConfig) and config.preset != "tiny":  # the preset's values under the user's
            config = load_config(cls, args.config, args.overrides, base=preset(config.preset), **flags)
        if world() > 1 and args.command not in ("sft", "rm", "dpo", "ppo"):
            raise UsageError(f"launched as {world()} processes; `{args.command}` runs as one process")
        status = RUNNERS[args.command](config)
        # every process done before any tears the group down (one that left early aborted a finished FSDP
        # run under load: "terminate called without an active exception"); only after success: a process
        # that failed alone must not leave the others waiting here
        barrier()
        return status
    except UsageError as exc:
        print(f"rlhfkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        print(
            f"rlhfkit {args.command}: {exc}; to continue, run the same command with --resume", file=sys.stderr
        )
        return 128 + exc.signum
    except Diverged as exc:
        print(f"rlhfkit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"rlhfkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
