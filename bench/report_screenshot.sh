#!/usr/bin/env bash
# The over-optimisation report, checked in a real headless browser: writes synthetic finished runs (a `ppo`
# run whose gold peaks and falls while its proxy keeps rising, a `grpo` run that stops before its peak, and
# seven `eval --best-of N` folders, N = 1 ... 64), runs `rlhfkit report` on them, and has Chromium render the
# page to a PNG to look at (overlapping labels, a legend over the points, a chart cut off). Not part of the
# test suite: it needs Chromium (`apt-get install -y chromium`) and a person to look.
#
#     bash bench/report_screenshot.sh [OUT_DIR]     # default /tmp/ooreport: report.html and report.png
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-/tmp/ooreport}"
PYTHON="${PYTHON:-.venv/bin/python}"
BROWSER="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$BROWSER" ] || { echo "no chromium on PATH: apt-get install -y chromium" >&2; exit 2; }
rm -rf "$OUT" && mkdir -p "$OUT/runs"

"$PYTHON" - "$OUT/runs" <<'EOF'
import json, math, random, sys
from pathlib import Path

root, rng = Path(sys.argv[1]), random.Random(0)

def run(name, alpha, beta, kls, proxy_slope):
    """A finished run: eval records at KL `kls`, gold 0.1 + d(α − β ln d) + noise, proxy rising with d."""
    folder = root / name
    folder.mkdir()
    (folder / "rlhfkit.json").write_text(json.dumps({"command": "ppo", "finished": True}))
    lines = []
    for step, kl in enumerate(kls):
        d = math.sqrt(kl)
        gold = 0.1 + (d * (alpha - beta * math.log(d)) if d else 0.0) + rng.gauss(0, 0.01)
        lines.append({"step": step * 10, "eval/kl": kl, "eval/score": proxy_slope * d, "monitor/gold": gold})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

run("ppo", 0.5, 0.6, [0, 0.3, 0.8, 1.5, 3, 5, 8, 12], 1.0)
run("grpo", 0.35, 0.15, [0, 0.2, 0.5, 1, 2, 3.5], 0.8)
for n in (1, 2, 4, 8, 16, 32, 64):
    kl = math.log(n) - (n - 1) / n
    d = math.sqrt(kl)
    result = {"reward": 0.9 * d, "gold": 0.1 + d * (0.6 - 0.3 * d), "kl": 0.0}
    if n > 1:
        result |= {"best_of": n, "kl_best_of_n": kl}
    (root / f"bon-{n}").mkdir()
    (root / f"bon-{n}" / "eval.json").write_text(json.dumps(result))
EOF

"$PYTHON" -m rlhfkit.cli report "$OUT"/runs/ppo "$OUT"/runs/grpo "$OUT"/runs/bon-* --out "$OUT/report.html"
"$BROWSER" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1400 \
    --screenshot="$OUT/report.png" "file://$(realpath "$OUT/report.html")" 2>/dev/null
ls -l "$OUT/report.png"
echo "look at $OUT/report.png"
