#!/usr/bin/env bash
# One command for a machine with one CUDA GPU and no network (the lent GPU machine): the test suite there
# (CUDA tests included), then rlhfkit vs TRL 1.12 at the SmolLM2-135M and TinyLlama-1.1B shapes in the issue's
# setting (64 episodes x 128 response tokens, 4 PPO epochs, mini-batch 16, bf16 autocast), printed as one table;
# then DPO steps, rlhfkit vs TRL 1.12's DPOTrainer, at the same shapes (bench/dpo_vs_trl.py; DPO=0 skips them).
# Within 8 minutes on an H100/H200, about 3 more with the DPO comparison.
#
# The machine lacks datasets, vaderSentiment, gguf and trl: put their wheels (and datasets' own needs: dill,
# multiprocess) in .whl/ first (python 3.12 manylinux wheels, `pip download --no-deps`); they are installed into
# /tmp/site, never into the system.
#
#     bash bench/gpu_check.sh            # TESTS_TIMEOUT=240 ITERATIONS=3 by default
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || exit 2
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader

echo "== tests (${TESTS_TIMEOUT:-240} s at most)"
timeout "${TESTS_TIMEOUT:-240}" python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -n 8

echo "== PPO iteration, rlhfkit vs TRL 1.12, bf16 autocast, 64 x 128 tokens x 4 epochs, mini-batch 16"
python3 bench/ppo_vs_trl.py --models smollm2-shape 1.1b --batch 64 --mini-batch 16 --response 128 \
    --epochs 4 --iterations "${ITERATIONS:-3}" --bf16

if [ "${DPO:-1}" != 0 ]; then
    echo "== DPO step, rlhfkit vs TRL 1.12, 32 pairs of <= 64-word responses, reference log-probs precomputed in both"
    echo "   (SmolLM2 shape in fp32: the losses must agree to float rounding; 1.1B shape with bf16 autocast)"
    python3 bench/dpo_vs_trl.py --models smollm2-shape --batch 32 --response 64 --steps 5
    python3 bench/dpo_vs_trl.py --models 1.1b --batch 32 --response 64 --steps 5 --bf16
fi
