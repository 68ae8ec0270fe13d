"""Messages mode: the tokens a chat template puts after a policy turn for the environment's new messages,
and the start-up check that the template can be extended turn by turn."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhfkit.data.encode import render_conversation
from rlhfkit.errors import EnvironmentFailure, UsageError, first_line
from rlhfkit.tasks.rewards import shown

SENTINEL = "\u2063rlhfkit-turn\u2063"  # an assistant turn's text, found again in a rendered template


@dataclass(frozen=True)
class TemplateDelta:
    """The tokens a chat template puts after a policy turn for the environment's new messages: the rest of
    the assistant turn (when the policy's stop token is not its end), the new messages, and the generation
    prompt of the next assistant turn, rendered once from a conversation whose assistant turn is a sentinel,
    so nothing the policy wrote is rendered or tokenised again."""

    tokenizer: Any

    def text(self, opening: list[dict], new: list[dict], sampled_end: str) -> str:
        """The text after the policy's turn (which ended with `sampled_end`, the text of its stop token when
        it is a special token, else "") for the messages `new`, in a conversation that opened with `opening`.
        A template that renders the earlier turns differently once `new` follows them is an
        EnvironmentFailure (nothing kept could be trusted)."""
        turn = [*opening, {"role": "assistant", "content": SENTINEL}]
        try:
            before = render_conversation(self.tokenizer, turn)
            after = render_conversation(self.tokenizer, turn + list(new), generation_prompt=True)
        except Exception as exc:  # a template's own rules (`raise_exception` on a role it does not know)
            raise EnvironmentFailure(
                f"the chat template cannot render the environment's messages {shown(new)}: "
                f"{type(exc).__name__} ({first_line(exc)})"
            ) from None
        if SENTINEL not in before or not after.startswith(before):
            raise EnvironmentFailure(
                "the chat template renders the earlier turns differently once the environment's messages "
                "follow them (it rewrites earlier turns): the kept tokens would not be the template's"
            )
        rest = after[before.index(SENTINEL) + len(SENTINEL) :]
        return rest[len(sampled_end) :] if sampled_end and rest.startswith(sampled_end) else rest

    def ids(self, opening: list[dict], new: list[dict], sampled_end: str) -> list[int]:
        text = self.text(opening, new, sampled_end)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def check_template(tokenizer: Any, opening: list[dict], new: list[dict], end: int) -> None:
    """A UsageError when rendering a whole conversation (`opening`, an assistant turn, the environment's
    `new` messages, the next generation prompt) does not start with the text kept turn by turn: the opening
    with its generation prompt, the turn and its end of turn (`end`), the rendered delta. Templates that
    rewrite earlier turns (drop a reasoning block, move a system message) fail here, at start-up."""
    probe = "4"
    end_text = tokenizer.decode([end])
    try:
        delta = TemplateDelta(tokenizer).text(opening, new, end_text)
    except EnvironmentFailure as exc:
        raise UsageError(str(exc)) from None
    try:
        kept = render_conversation(tokenizer, opening, generation_prompt=True) + probe + end_text + delta
        whole = render_conversation(
            tokenizer, [*opening, {"role": "assistant", "content": probe}, *new], generation_prompt=True
        )
    except Exception as exc:
        raise UsageError(f"the chat template cannot render the conversation: {first_line(exc)}") from None
    if not whole.startswith(kept):
        raise UsageError(
            "the chat template cannot be extended turn by turn: the whole conversation renders as "
            f"{shown(whole)}, not starting with what the turns kept, {shown(kept)} (it rewrites earlier "
            f"turns, or does not close an assistant turn with the token the policy stops on, {end_text!r}); "
            "give the environment's answers as text instead"
        )
