"""Instruction data for causal LMs: a prompt (text or chat) and the completion the loss is taken on.

Prompt/completion pairs of plain text are joined as they are (TRL's "prompt-completion" format):
``prompt + completion``. A chat (a ``messages`` list) is rendered with the tokenizer's chat template
when it has one; otherwise with the plain template below, documented in docs/guides/decoders.md::

    System: <content>
    User: <content>
    Assistant: <completion>

i.e. one ``Role: content`` line per earlier turn, then ``Assistant:`` as the prompt's end and
`` <completion>`` (with a leading space) as the completion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import DataError
from .dataset import TextDataset

PLAIN_TURN = "{role}: {content}\n"
PLAIN_REPLY_PREFIX = "Assistant:"


@dataclass
class InstructionDataset(TextDataset):
    """Instruction examples. ``prompts[i]`` is a string or a list of chat messages (the turns before
    the reply); ``completions[i]`` the text the loss is taken on. ``texts`` holds the plain content of
    each example (the review of ``rt-instruct``, a prompt's text) for stratification and
    decontamination. When the completions are labels, ``options`` lists them and ``labels[i]`` is the
    index of example i's completion; otherwise ``options`` is empty and every label is 0."""

    prompts: list = field(default_factory=list)
    completions: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (len(self.prompts) == len(self.completions) == len(self.texts)):
            raise DataError(
                f"{self.name}/{self.split}: {len(self.prompts)} prompts, {len(self.completions)} "
                f"completions and {len(self.texts)} texts"
            )

    def require_classes(self, at_least: int = 2) -> "InstructionDataset":
        """Free-text completions have no classes; label options must all be present, as for a classifier."""
        return super().require_classes(at_least) if self.options else self

    def subset(self, indices: list[int], split: str | None = None) -> "InstructionDataset":
        return InstructionDataset(
            [self.texts[i] for i in indices],
            [self.labels[i] for i in indices],
            self.name,
            split or self.split,
            self.num_labels,
            0,
            self.source,
            dict(self.meta),
            [self.prompts[i] for i in indices],
            [self.completions[i] for i in indices],
            list(self.options),
        )

    @classmethod
    def from_labelled(
        cls, ds: TextDataset, template: str, options: list[str], name: str | None = None
    ) -> "InstructionDataset":
        """A classification split as instructions: ``template.format(text=...)`` as the prompt and the
        option of each example's label as its completion (``rt-instruct``)."""
        if len(options) < ds.num_labels:
            raise DataError(f"{len(options)} completion options for {ds.num_labels} labels")
        return cls(
            list(ds.texts),
            list(ds.labels),
            name or ds.name,
            ds.split,
            len(options),
            ds.skipped,
            ds.source,
            {**ds.meta, "template": template},
            [template.format(text=t) for t in ds.texts],
            [options[y] for y in ds.labels],
            list(options),
        )


def last_assistant_turn(messages: list) -> int | None:
    """Index of the last assistant message, or None (a chat without a reply has nothing to learn)."""
    for i in range(len(messages) - 1, -1, -1):
        if isinstance(messages[i], dict) and messages[i].get("role") == "assistant":
            return i
    return None


def plain_chat_prompt(messages: list[dict]) -> str:
    return (
        "".join(
            PLAIN_TURN.format(role=str(m.get("role", "user")).capitalize(), content=m.get("content", ""))
            for m in messages
        )
        + PLAIN_REPLY_PREFIX
    )


def render(prompt, completion: str, tokenizer) -> tuple[str, str]:
    """(prompt text, completion text) of one example, ready to tokenise without special tokens."""
    if isinstance(prompt, str):
        return prompt, completion
    if not getattr(tokenizer, "chat_template", None):
        return plain_chat_prompt(prompt), " " + completion
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": completion}], tokenize=False)
    if not full.startswith(head):
        raise DataError(
            "the tokenizer's chat template does not render the prompt as a prefix of the whole chat, "
            "so the completion cannot be located; use prompt/completion columns instead"
        )
    return head, full[len(head) :]


def uses_chat_template(ds: InstructionDataset, tokenizer) -> bool | None:
    """True/False when the data holds chats (rendered with the template or the plain fallback); None otherwise."""
    if not any(isinstance(p, list) for p in ds.prompts):
        return None
    return bool(getattr(tokenizer, "chat_template", None))
