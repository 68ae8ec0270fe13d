"""Direct preference optimisation: the loss of a policy on preference pairs against a frozen reference,
without a reward model or sampling (Rafailov et al. 2023), and its variants.

Every argument is one number per pair: the summed (or, for IPO and SimPO, length-averaged) log-probability
of the chosen or rejected response under the policy or the reference.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DPOLoss = Literal["sigmoid", "robust", "hinge", "ipo", "simpo"]
DPO_LOSSES: tuple[str, ...] = ("sigmoid", "robust", "hinge", "ipo", "simpo")


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor | None,
    reference_rejected: torch.Tensor | None,
    *,
    beta: float,
    loss_type: DPOLoss = "sigmoid",
    label_smoothing: float = 0.0,
    gamma: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO losses and implicit rewards. All inputs (B,); returns `(losses, chosen_rewards,
    rejected_rewards)`, each (B,).

    With x = (policy_chosen − policy_rejected) − (reference_chosen − reference_rejected) and ε the label
    smoothing (the probability that a label is flipped):
      sigmoid  −(1−ε)·logσ(βx) − ε·logσ(−βx)              DPO; with ε > 0 conservative DPO (cDPO)
      robust   (−(1−ε)·logσ(βx) + ε·logσ(−βx)) / (1−2ε)   unbiased under label noise (Chowdhury et al. 2024)
      hinge    relu(1 − βx)                              SLiC (Zhao et al. 2023)
      ipo      (x − 1/(2β))²                              IPO (Azar et al. 2023): β is its τ
      simpo    −logσ(β·(policy_chosen − policy_rejected) − γ)   SimPO (Meng et al. 2024), no reference
    The implicit rewards are β·(policy − reference), or β·policy for simpo; they carry no gradient.
    """
    if loss_type not in DPO_LOSSES:
        raise ValueError(f"unknown loss_type {loss_type!r}; expected one of {', '.join(DPO_LOSSES)}")
    if loss_type == "simpo":
        margin = policy_chosen - policy_rejected  # (B,)
        losses = -F.logsigmoid(beta * margin - gamma)  # (B,)
        return losses, beta * policy_chosen.detach(), beta * policy_rejected.detach()
    if reference_chosen is None or reference_rejected is None:
        raise ValueError(f"loss_type {loss_type!r} needs the reference's log-probs")
    x = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)  # (B,)
    eps = label_smoothing
    if loss_type == "sigmoid":
        losses = -(1 - eps) * F.logsigmoid(beta * x) - eps * F.logsigmoid(-beta * x)  # (B,)
    elif loss_type == "robust":
        losses = (-(1 - eps) * F.logsigmoid(beta * x) + eps * F.logsigmoid(-beta * x)) / (1 - 2 * eps)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * x)  # (B,)
    else:  # ipo
        losses = (x - 1 / (2 * beta)) ** 2  # (B,)
    chosen_rewards = beta * (policy_chosen - reference_chosen).detach()  # (B,)
    rejected_rewards = beta * (policy_rejected - reference_rejected).detach()  # (B,)
    return losses, chosen_rewards, rejected_rewards


def best_and_worst(scores: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Online DPO's pairs: in each run of `group` consecutive samples of one prompt, the index of the
    highest and of the lowest score (the first of equals). A group whose scores are all equal gives no pair.

    scores: (B,) with B a multiple of `group`. Returns (chosen, rejected), each (P,) indices into `scores`,
    P <= B / group, in group order.
    """
    grouped = scores.view(-1, group)  # (B / k, k)
    best, worst = grouped.argmax(dim=1), grouped.argmin(dim=1)  # (B / k,), (B / k,)
    starts = torch.arange(grouped.shape[0], device=scores.device) * group  # (B / k,)
    paired = grouped.amax(dim=1) > grouped.amin(dim=1)  # (B / k,) False: a tie, no preference
    return (starts + best)[paired], (starts + worst)[paired]
