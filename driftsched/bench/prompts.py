"""Prompt text for a workload item, sized for the service's token count and carrying its category's cue.

The ingress accepts no category field: it classifies from content cues (`driftsched.core.classify`),
then prompt length and ``max_tokens``. So a prompt opens with a lead that carries its category's cue
(the item's own text when it has one) and is padded with neutral three-letter words to the item's
``prompt_tokens`` as the simulated engine counts them, ``max(words, ceil(chars / 4))``: each pad word
plus its space is four characters, so it adds exactly one token to either count. Pad words are chosen
so that no cue can form from them (no "bug", "def", "sql"). Q&A and chat have no cue; the service tells
them apart by ``max_tokens`` alone, as it would for a real tenant.
"""

from __future__ import annotations

import math

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
