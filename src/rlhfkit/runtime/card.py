"""Model cards: the `README.md` that every model folder rlhfkit saves carries, so that a folder pushed to the
Hugging Face Hub describes itself (as TRL's trainers do).

The card is YAML metadata between `---` lines, which the Hub (and `huggingface_hub.ModelCard`) reads:
`base_model` (the hub model the weights descend from), `base_model_relation` (`adapter` or `finetune`),
`library_name` (`transformers`, or `peft` for an adapter folder), `pipeline_tag`, `tags` (`rlhfkit`, the
method, `lora` for an adapter) and `datasets` (the hub datasets the run read); then a body: what the model is,
how to load it, the run's final numbers and its configuration.

`base_model` must be a hub id. A run that starts from a local folder takes the `base_model` of the card
rlhfkit wrote into that folder when it trained it (so an RM trained from a local SFT folder of
`HuggingFaceTB/SmolLM2-135M` names `HuggingFaceTB/SmolLM2-135M`), else the base of an adapter folder, else the
id in a hub cache path (`models--ORG--NAME/snapshots/...`); with none of these the key is left out (the body
still names the folder). The output folder is rlhfkit's: a README.md in it is replaced.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhfkit import __version__
from rlhfkit.config import to_dict
from rlhfkit.data.sources import is_local, parse_source
from rlhfkit.errors import UsageError
from rlhfkit.models.lora import adapter_base, is_adapter_folder

CARD = "README.md"
# config fields that name data a run trained or evaluated on (sft/rm/dpo: data; ppo/online dpo: prompts)
DATA_FIELDS = ("data", "eval_data", "prompts", "eval_prompts", "ptx_data")
# the method's long name, by its tag
METHODS = {
    "sft": "supervised fine-tuning (SFT)",
    "reward-model": "reward modelling: the pairwise Bradley-Terry loss on preference pairs",
    "dpo": "Direct Preference Optimization (DPO)",
    "online-dpo": "online DPO: pairs of the policy's own samples, best and worst by the reward",
    "ppo": "PPO with a critic (GAE advantages)",
    "grpo": "PPO's clipped objective with GRPO's group-normalised advantages (no critic)",
    "rloo": "PPO's clipped objective with RLOO's leave-one-out baseline (no critic)",
    "reinforce_pp": "PPO's clipped objective with REINFORCE++'s batch-whitened returns (no critic)",
}
HUB_CACHE = re.compile(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots[/\\]")

Kind = Literal["causal-lm", "scalar"]


@dataclass(frozen=True)
class Card:
    """What a model card says about one saved folder."""

    command: str  # the rlhfkit command that trained it: sft, rm, dpo, ppo
    method: str  # its tag on the hub: sft, reward-model, dpo, ppo, grpo, rloo, reinforce_pp
    kind: Kind  # a causal LM, or a scalar-head (sequence-classification) model: an RM or a critic
    start: str  # the model training started from, as given: a hub name or a local folder
    base_model: str | None  # the hub id the weights descend from (`traced_base_model`); None when unknown
    sources: tuple[str, ...]  # the data the run read, as given
    datasets: tuple[str, ...]  # the hub datasets among them (`hub_datasets`)
    numbers: dict[str, float] = field(default_factory=dict)  # the run's final metrics
    config: str = ""  # the run's configuration as YAML (what config.yaml holds)
    adapter: bool = False  # a PEFT adapter folder (the weights are the base's plus the adapter)
    version: str = __version__


def method_tag(command: str, config: Any) -> str:
    """The method's tag: `rm` is `reward-model`; `ppo` is named by its advantage estimator (`ppo` for GAE,
    else `grpo`, `rloo`, `reinforce_pp`); `dpo` on prompts is `online-dpo`; any other command by its name."""
    if command == "dpo" and getattr(config, "prompts", None):
        return "online-dpo"
    if command == "ppo":
        estimator = getattr(config, "advantage_estimator", "gae")
        return "ppo" if estimator == "gae" else estimator
    return {"rm": "reward-model"}.get(command, command)


def model_kind(model: Any) -> Kind:
    """`scalar` for a sequence-classification model (RM, critic), else `causal-lm`."""
    return "scalar" if type(model).__name__.endswith("ForSequenceClassification") else "causal-lm"


def hub_datasets(sources: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The dataset names among `sources` that `open_rows` reads from the hub (`NAME[:CONFIG][@SPLIT]` gives
    NAME), each once, in order; local files and folders, existing or not, are left out."""
    names = [parse_source(source)[0] for source in sources]
    return tuple(dict.fromkeys(name for name in names if not is_local(name)))


def card_metadata(folder: str | Path) -> dict[str, Any]:
    """The metadata of the model card in `folder` ({} when there is none or it does not parse)."""
    from huggingface_hub import metadata_load

    if not (Path(folder) / CARD).is_file():
        return {}
    try:
        return metadata_load(Path(folder) / CARD) or {}
    except (OSError, ValueError, yaml.YAMLError):  # a card someone else wrote, unreadable: no metadata
        return {}


def traced_base_model(start: str, depth: int = 8) -> str | None:
    """The hub id the model `start` descends from: `start` itself when it is not a local path; for a local
    folder the `base_model` of the card rlhfkit wrote into it, else that of an adapter folder's base (traced
    in turn), else the id of a hub cache snapshot path; None when none names one. Another tool's card is not
    read: its `base_model` is the base of the folder's model, whose own id is unknown (a hub model downloaded
    into a folder of its own). `depth` bounds a chain of adapter folders."""
    folder = Path(start).expanduser()
    if not folder.exists():
        return start  # a hub name (a path that does not exist was refused before training)
    metadata = card_metadata(folder)
    base = metadata.get("base_model")
    if "rlhfkit" in (metadata.get("tags") or []) and isinstance(base, str) and base:
        return base
    if is_adapter_folder(start) and depth > 0:
        try:
            return traced_base_model(adapter_base(start), depth - 1)
        except UsageError:  # its base is gone: nothing to trace
            return None
    cached = HUB_CACHE.search(str(folder.resolve()))
    return f"{cached[1]}/{cached[2]}" if cached else None


def run_card(command: str, config: Any, numbers: dict[str, Any], start: str, kind: Kind) -> Card:
    """The card of a model trained by `command` with `config` from `start`, whose run ended with `numbers`
    (only the numeric ones are kept). Reads the start's own card (`traced_base_model`)."""
    sources = tuple(s for s in (getattr(config, name, None) for name in DATA_FIELDS) if isinstance(s, str))
    kept = {
        k: float(v) for k, v in numbers.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return Card(
        command=command,
        method=method_tag(command, config),
        kind=kind,
        start=start,
        base_model=traced_base_model(start),
        sources=sources,
        datasets=hub_datasets(sources),
        numbers=kept,
        config=yaml.safe_dump(to_dict(config), sort_keys=False),
    )


def card_header(card: Card) -> dict[str, Any]:
    """The card's metadata, in the Hub's keys."""
    header: dict[str, Any] = {}
    if card.base_model:
        header["base_model"] = card.base_model
        header["base_model_relation"] = "adapter" if card.adapter else "finetune"
    header["library_name"] = "peft" if card.adapter else "transformers"
    header["pipeline_tag"] = "text-generation" if card.kind == "causal-lm" else "text-classification"
    header["tags"] = ["rlhfkit", card.method, *(["lora"] if card.adapter else [])]
    if card.datasets:
        header["datasets"] = list(card.datasets)
    return header


def render_card(card: Card, name: str, title: str | None = None) -> str:
    """The whole README.md of the folder called `name` (the model id of the loading example), headed `title`
    (default: `name`)."""
    metadata = yaml.safe_dump(card_header(card), sort_keys=False, allow_unicode=True)
    parts = [f"---\n{metadata}---", f"# {title or name}", _summary(card), "## Use it", _usage(card, name)]
    if card.numbers:
        rows = "\n".join(f"| `{k}` | {v:.6g} |" for k, v in card.numbers.items())
        parts += ["## Results", "The run's final metrics:", f"| metric | value |\n| --- | ---: |\n{rows}"]
    parts += [
        "## Training",
        f"Trained with rlhfkit {card.version}: `rlhfkit {card.command} --config config.yaml` repeats the run "
        "(config.yaml is in the run's folder; its full text follows).",
        f"<details><summary>config.yaml</summary>\n\n```yaml\n{card.config}```\n\n</details>",
    ]
    return "\n\n".join(parts) + "\n"


def _summary(card: Card) -> str:
    """What the folder holds, trained how, from what, on what."""
    if card.kind == "causal-lm":
        what = "A causal language model"
    elif card.method == "reward-model":
        what = "A reward model (a scalar `score` head on the transformer, read at a text's last token)"
    else:
        what = "The critic (value model) of the run: a scalar `score` head that estimates the return"
    if card.adapter:
        what = f"A LoRA adapter (PEFT) for `{card.start}`; with it the base is {what[0].lower()}{what[1:]}"
    start = f"`{card.start}`"
    if card.base_model and card.base_model != card.start:
        start += f" (from `{card.base_model}`)"
    data = ", ".join(f"`{s}`" for s in card.sources) or "none named"
    return (
        f"{what}, trained by rlhfkit {card.version}.\n\n"
        f"- **Method:** {METHODS.get(card.method, card.method)} (`rlhfkit {card.command}`)\n"
        f"- **Started from:** {start}\n"
        f"- **Data:** {data}"
    )


def _usage(card: Card, name: str) -> str:
    """A Python example that loads the folder and uses it."""
    if card.adapter:
        cls = (
            "AutoPeftModelForCausalLM"
            if card.kind == "causal-lm"
            else "AutoPeftModelForSequenceClassification"
        )
        load = (
            f"from peft import {cls}\nfrom transformers import AutoTokenizer\n\n"
            f'model_id = "{name}"  # this folder, or its id on the Hub\n'
            "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
            "# the base named in adapter_config.json, with the adapter on it\n"
            f"model = {cls}.from_pretrained(model_id{'' if card.kind == 'causal-lm' else ', num_labels=1'})\n"
        )
    else:
        cls = "AutoModelForCausalLM" if card.kind == "causal-lm" else "AutoModelForSequenceClassification"
        load = (
            f"from transformers import {cls}, AutoTokenizer\n\n"
            f'model_id = "{name}"  # this folder, or its id on the Hub\n'
            "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
            f"model = {cls}.from_pretrained(model_id)\n"
        )
    if card.kind == "causal-lm":
        use = (
            'inputs = tokenizer("The movie was", return_tensors="pt")\n'
            "print(tokenizer.decode(model.generate(**inputs, max_new_tokens=32)[0]))\n"
        )
    else:
        use = (
            'inputs = tokenizer("The movie was great.", return_tensors="pt")\n'
            "score = model(**inputs).logits[0, 0]  # read at the last token\n"
        )
    note = (
        "Format a prompt as training did (the tokenizer's chat template, when it has one). rlhfkit loads the "
        "folder wherever it expects a model (`--model`, `--policy`, `--reward-model`)."
    )
    if card.adapter:  # adapter_config.json names the base as it was found on the training machine
        base = card.base_model or card.start
        note += (
            f" Where the base is not at the path in adapter_config.json, load `{base}` and put the adapter "
            "on it: `peft.PeftModel.from_pretrained(base, model_id)`."
        )
    return f"```python\n{load}\n{use}```\n\n{note}"


def write_card(folder: Path, card: Card, title: str | None = None) -> None:
    """Write `folder`/README.md (replacing one there) through a temporary file renamed into place, so a crash
    never leaves half a card. `title` heads it (default: the folder's name)."""
    text = render_card(card, Path(folder).resolve().name, title)
    staging = Path(folder) / f".{CARD}.tmp"
    staging.write_text(text)
    os.replace(staging, Path(folder) / CARD)
