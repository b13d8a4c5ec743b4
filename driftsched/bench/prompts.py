"""What the service sees of a workload item: `intake_fields`, and the prompt text it sends.

`intake_fields` is the one definition of the inputs a live request carries into the intake (prompt text,
declared category, ``max_tokens``; a request's tier comes with its tenant's key). `driftsched loadgen`
builds its HTTP body from it, and the simulator builds its core `Request` from it, so both sides
classify and estimate identical inputs. Ray-free: it imports no Ray, Serve or HTTP client.

The prompt text opens with a lead that carries its category's content cue (the item's own text when it
has one) and is padded with neutral three-letter words to the item's ``prompt_tokens`` as the simulated
engine counts them, ``max(words, ceil(chars / 4))``: each pad word plus its space is four characters, so
it adds exactly one token to either count. Pad words are chosen so that no cue can form from them (no
"bug", "def", "sql"). The declared category wins over the cues at the service; the cues still matter to
a service reached without one (Q&A and chat have none: the classifier tells them apart by ``max_tokens``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from driftsched.core.config import CATEGORIES
from driftsched.sim.workload import WorkloadItem

LEADS = {
    "qa": "Quick question: which port does the public API listen on?",
    "chat": "Hi, I would like some help setting up my account. Can we go through it together?",
    "code": "```python\ndef parse(rows):\n    ...\n```\nFix the bug in this function.",
    "summarize": "Summarize the following ticket thread in a few bullet points:",
    "longform": "Write a report on our quarterly product launch, with sections and a conclusion.",
}
_PAD = ("the", "sun", "map", "red", "box", "sky", "tea", "oak")


def approx_tokens(text: str) -> int:
    """The simulated engine's count (`deployments.engine.approx_token_count`, kept Ray-free here)."""
    return max(len(text.split()), math.ceil(len(text) / 4)) if text else 0


def synthesize(category: str, prompt_tokens: int, lead: str | None = None) -> str:
    """A prompt of about `prompt_tokens` tokens (never fewer than its lead's) opening with the cue."""
    text = lead or LEADS.get(category, LEADS["chat"])
    missing = prompt_tokens - approx_tokens(text)
    if missing <= 0:
        return text
    pad = " ".join(_PAD[i % len(_PAD)] for i in range(missing))
    return f"{text} {pad}"  # exact: each " xxx" adds one word and four characters


@dataclass(frozen=True, slots=True)
class IntakeFields:
    """The admission-time inputs of one request, as the service receives them (see `intake_fields`)."""

    prompt_text: str
    """The prompt sent as the body's ``prompt``."""
    prompt_tokens: int
    """``prompt_text`` counted as a simulated-engine service counts it (`approx_tokens`); a vLLM
    service counts the same text with its tokenizer instead."""
    category: str | None
    """The declared category, sent as the body's ``category``; None: none declared, the service
    classifies the prompt."""
    max_tokens: int
    """The body's ``max_tokens``."""


def intake_fields(item: WorkloadItem) -> IntakeFields:
    """THE definition of what the service sees of a workload item; nothing else of the item reaches
    classification, estimation or admission.

    `driftsched loadgen` sends exactly these fields (plus transport: model, streaming, and in benchmark
    mode the engine-only target length), and the simulator builds its core `Request` from them, so a
    live run and its simulation give the intake identical inputs. The prompt is `synthesize`d from the
    item (idempotent: an item whose text already has its length comes back unchanged). The item's
    category is declared when the service knows it (`CATEGORIES`); any other is not sent, and the
    prompt is classified on both sides. Never the true output length.
    """
    text = synthesize(item.category, item.prompt_tokens, item.prompt_text)
    return IntakeFields(
        prompt_text=text,
        prompt_tokens=approx_tokens(text),
        category=item.category if item.category in CATEGORIES else None,
        max_tokens=item.max_tokens,
    )
