"""`rlhfkit report RUN [RUN ...]`: finished ppo/dpo runs and eval --best-of folders -> one HTML page; bad
input is one line, status 2, nothing written."""

import dataclasses
import json
import math

import pytest

from helpers import ppo_config
from rlhfkit.cli import main

# RL, α = 1, β = 0.5 (as in tests/report/test_overoptimisation.py): gold = d(1 - 0.5 ln d) at d = 0, 1, 2, 4
RL_KL = [0.0, 1.0, 4.0, 16.0]


def rl_gold(kl: float) -> float:
    d = math.sqrt(kl)
    return d * (1 - 0.5 * math.log(d)) if d else 0.0


def write_run(folder, command="ppo", finished=True, evaluations=None):
    """A run folder as `ppo`/`dpo` leaves it: rlhfkit.json and metrics.jsonl with a training record per
    step and, for each evaluation, eval/kl, eval/score and monitor/gold."""
    folder.mkdir(parents=True)
    (folder / "rlhfkit.json").write_text(json.dumps({"command": command, "finished": finished}))
    if evaluations is None:
        evaluations = [
            {"eval/kl": k, "eval/score": 0.5 * math.sqrt(k), "monitor/gold": rl_gold(k)} for k in RL_KL
        ]
    lines = [json.dumps({"step": s, "loss": 1.0, **e}) for s, e in enumerate(evaluations)]
    lines.insert(1, json.dumps({"step": 0.5, "loss": 1.0}))  # a record without an evaluation is skipped
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return str(folder)


def write_best_of(folder, n, gold, reward):
    """An `eval --best-of N` folder: eval.json (N = 1 writes neither best_of nor kl_best_of_n)."""
    folder.mkdir(parents=True)
    result = {"reward": reward, "gold": gold, "kl": 0.0, "length": 9.0, "stop_rate": 1.0}
    if n > 1:
        result |= {"best_of": n, "kl_best_of_n": math.log(n) - (n - 1) / n}
    (folder / "eval.json").write_text(json.dumps(result))
    return str(folder)


def rows(page: str) -> dict[str, str]:
    """The peak table's rows by method."""
    found = {}
    for row in page.split("<tr>")[2:]:
        name = row.removeprefix("<td>").split(" [")[0]
        found[name] = row
    return found


def test_runs_and_best_of_folders_make_one_page(tmp_path, capsys):
    ppo = write_run(tmp_path / "ppo")
    # best-of-N points given out of N order: the curve is sorted by N (KL log N - (N-1)/N: 0, 0.193, 0.636)
    bon = [
        write_best_of(tmp_path / f"bo{n}", n, g, r)
        for n, g, r in ((4, 0.3, 0.9), (1, 0.1, 0.1), (2, 0.25, 0.5))
    ]
    out = tmp_path / "report.html"
    assert main(["report", ppo, *bon, "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"rlhfkit report: open {out}"
    page = out.read_text()
    assert page.count("<svg") == 2
    table = rows(page)
    assert set(table) == {"ppo", "bon"}
    # ppo: α 1, β 0.5 given back; peak of the points at d = 2 (KL 4): 2(1 - 0.5 ln 2) = 1.307
    for cell in ("1.000", "0.500", "1.307", "4.00"):
        assert f'<td class="num">{cell}</td>' in table["ppo"]
    # bon: peak gold 0.3 at N = 4, KL log 4 - 3/4 = 0.636; final proxy 0.9
    assert "N = 4" in table["bon"]
    for cell in ("0.300", "0.64", "0.900"):
        assert f'<td class="num">{cell}</td>' in table["bon"]


def test_best_of_1_is_the_origin_of_runs_without_a_kl_0_evaluation(tmp_path):
    # the run's evaluations start at KL 1 (steps 1, 2, 3): without a best-of-1 folder no fit; with one of gold
    # 0 (the initial policy's), its fit is over gold 0 and gives α 1, β 0.5 back
    evaluations = [{"eval/kl": k, "eval/score": 0.0, "monitor/gold": rl_gold(k)} for k in RL_KL[1:]]
    ppo = write_run(tmp_path / "ppo", evaluations=evaluations)
    out = tmp_path / "r.html"
    assert main(["report", ppo, "--out", str(out)]) == 0
    assert rows(out.read_text())["ppo"].startswith("<td>ppo [no fit]")
    bon1 = write_best_of(tmp_path / "bo1", 1, 0.0, 0.0)
    assert main(["report", ppo, bon1, "--out", str(out)]) == 0
    row = rows(out.read_text())["ppo"]
    assert row.startswith("<td>ppo [rl form]")
    assert '<td class="num">1.000</td><td class="num">0.500</td>' in row
    assert "fit over the initial policy&#x27;s gold 0.000, measured apart" in row


def test_training_monitors_are_not_held_out_ones(tmp_path):
    # `monitor/train/gold` (monitor_training) sits in the evaluations' records too: the only held-out
    # monitor is still `gold`, and its values are the ones read: final gold at KL 16, 4(1 - 0.5 ln 4) = 1.227
    evaluations = [
        {"eval/kl": k, "eval/score": 0.0, "monitor/gold": rl_gold(k), "monitor/train/gold": -9.0}
        for k in RL_KL
    ]
    out = tmp_path / "r.html"
    assert main(["report", write_run(tmp_path / "ppo", evaluations=evaluations), "--out", str(out)]) == 0
    assert f'<td class="num">{rl_gold(16.0):.3f}</td>' in rows(out.read_text())["ppo"]


def test_positional_runs_and_overrides_mix(tmp_path):
    # `gold=score2` among the folders is an override, not a folder; the run's only other monitor is ignored
    evaluations = [
        {"eval/kl": k, "eval/score": 0.0, "monitor/score2": rl_gold(k), "monitor/len": 3.0} for k in RL_KL
    ]
    ppo = write_run(tmp_path / "ppo", evaluations=evaluations)
    out = tmp_path / "r.html"
    assert main(["report", ppo, "gold=score2", "--out", str(out), "proxy=len"]) == 0
    table = rows(out.read_text())
    # gold from monitor/score2: α 1, β 0.5; final proxy: monitor/len = 3
    assert '<td class="num">1.000</td><td class="num">0.500</td>' in table["ppo"]
    assert '<td class="num">3.000</td>' in table["ppo"]


def test_runs_from_a_config_file(tmp_path):
    # no folder on the command line: the file's `runs` are read (an empty positional list must not erase them)
    ppo = write_run(tmp_path / "ppo")
    (tmp_path / "report.yaml").write_text(f"runs: [{ppo}]\ngold: gold\n")
    out = tmp_path / "r.html"
    assert main(["report", "--config", str(tmp_path / "report.yaml"), "--out", str(out)]) == 0
    assert set(rows(out.read_text())) == {"ppo"}


def bad(tmp_path):
    """name -> (folders, extra arguments) of each bad input."""
    return {
        "no folder": ([str(tmp_path / "nowhere")], [], "is not a finished ppo or dpo run"),
        "unfinished": ([write_run(tmp_path / "u", finished=False)], [], "is not a finished ppo or dpo run"),
        "not a training run": ([write_run(tmp_path / "s", command="sft")], [], "is not a finished"),
        "no evaluations": ([write_run(tmp_path / "e", evaluations=[])], [], "no held-out evaluations"),
        "no monitor": (
            [write_run(tmp_path / "m", evaluations=[{"eval/kl": 0.0, "eval/score": 0.0}])],
            [],
            "no monitor to use as the gold reward",
        ),
        "two monitors": (
            [
                write_run(
                    tmp_path / "t",
                    evaluations=[{"eval/kl": 0.0, "eval/score": 0.0, "monitor/a": 1, "monitor/b": 2}],
                )
            ],
            [],
            "several monitors (a, b); choose the gold with gold=NAME",
        ),
        "no such gold": ([write_run(tmp_path / "g")], ["gold=true_reward"], "no monitor 'true_reward'"),
        "no such proxy": ([write_run(tmp_path / "p")], ["proxy=rm"], "has no monitor/rm"),
        "same N twice": (
            [write_best_of(tmp_path / "b1", 2, 0.1, 0.1), write_best_of(tmp_path / "b2", 2, 0.2, 0.2)],
            [],
            "same best_of N",
        ),
        "eval without gold": ([str(tmp_path / "ng")], [], "has no gold reward"),
        "no runs": ([], [], "give the run folders to read"),
        "an eval of a trained policy": (  # best-of-1 at KL 2 from its reference: not the initial policy
            [write_run(tmp_path / "r"), str(tmp_path / "trained")],
            [],
            "an eval of a policy at KL 2 from its reference",
        ),
        "two runs of one name": (
            [
                write_run(tmp_path / "a" / "x" / "ppo"),
                write_run(tmp_path / "b" / "x" / "ppo"),
                write_run(tmp_path / "c" / "x" / "ppo"),
            ],
            [],
            "two runs would both be named 'x/ppo'",
        ),  # fmt: skip
        "a run named bon": ([write_run(tmp_path / "bon")], [], "would both be named 'bon'"),
        "not html": (  # an override beats --out
            [write_run(tmp_path / "h")],
            [f"out={tmp_path / 'report.txt'}"],
            "out must name an .html file",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "no folder",
        "unfinished",
        "not a training run",
        "no evaluations",
        "no monitor",
        "two monitors",
        "no such gold",
        "no such proxy",
        "same N twice",
        "eval without gold",
        "no runs",
        "an eval of a trained policy",
        "two runs of one name",
        "a run named bon",
        "not html",
    ],
)
def test_bad_input_is_one_line_status_2_nothing_written(tmp_path, capsys, case):
    (tmp_path / "ng").mkdir()
    (tmp_path / "ng" / "eval.json").write_text(json.dumps({"reward": 0.1, "kl": 0.0}))
    (tmp_path / "trained").mkdir()
    (tmp_path / "trained" / "eval.json").write_text(json.dumps({"reward": 1.0, "gold": 0.9, "kl": 2.0}))
    folders, extra, message = bad(tmp_path)[case]
    out = tmp_path / "report.html"
    assert main(["report", *folders, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("rlhfkit report: error: ")
    assert message in err
    assert not out.exists() and not (tmp_path / "report.txt").exists()


def test_a_real_ppo_run(rlhf_stack, tmp_path, capsys):
    """A tiny real `ppo` run with two monitors, neither named `gold`: refused until gold=NAME picks one; then
    the table holds that monitor's values from metrics.jsonl."""
    from rlhfkit.algorithms.ppo import ppo

    monitors = ("helpers:great_reward", "helpers:length_reward")
    config = ppo_config(rlhf_stack, tmp_path / "ppo", max_steps=2, eval_every=1, eval_holdout=8)
    run = ppo(dataclasses.replace(config, monitor_functions=monitors))
    out = tmp_path / "report.html"
    assert main(["report", str(run), "--out", str(out)]) == 2
    assert "several monitors (great_reward, length_reward)" in capsys.readouterr().err
    assert not out.exists()

    assert main(["report", str(run), "gold=length_reward", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evaluated = [r for r in records if "eval/kl" in r]
    assert [r["step"] for r in evaluated] == [1, 2]
    row = rows(out.read_text())["ppo"]
    # no evaluation at step 0 (KL 0) and no best-of-1 folder: no fit; the peak and the final point are the
    # evaluations' own (the first of equal golds)
    best = max(evaluated, key=lambda r: r["monitor/length_reward"])
    assert row.startswith("<td>ppo [no fit]")
    peak, final = best["monitor/length_reward"], evaluated[-1]
    assert (
        f'<td class="num">{peak:.3f}</td><td class="num">{best["eval/kl"]:.2f}</td>' in row
    )  # peak, KL there
    assert (  # final gold, proxy (eval/score), KL
        f'<td class="num">{final["monitor/length_reward"]:.3f}</td><td class="num">{final["eval/score"]:.3f}'
        f'</td><td class="num">{final["eval/kl"]:.2f}</td>'
    ) in row


def test_help_documents_the_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: rlhfkit report" in text and "[RUN ...]" in text
    assert "gold (str | None, default None)" in text and "proxy (str, default 'eval/score')" in text
