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

Prefixes. An item with prefix block hashes (a tenant's system prompt, a session's earlier turns, a
trace's ``hash_ids``) gets text in which its blocks are *the same text* wherever their hashes are equal:
each whole block of ``block_tokens`` tokens is written from its hash (seven words spelling the hash,
then pad words; one word is four characters and one token), and the lead and padding follow in the
partial block after them. The service hashes the text it receives (`driftsched.core.prefix`), so a live
run shares exactly the prefixes its simulation shares. With more than about four blocks the lead falls
past the classifier's cue window; the declared category carries the item's category there.
"""

from __future__ import annotations

import functools
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


_HASH_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"
_HASH_WORDS = 7  # each "z" + two base-36 digits: 7 x log2(1296) > 63 bits; no word can form a cue


@functools.lru_cache(maxsize=65536)
def block_text(block_hash: int, block_tokens: int) -> str:
    """The text of one prefix block: `block_tokens` words (4 characters each, with their space),
    the first seven spelling `block_hash`, so equal hashes give equal text and different ones differ."""
    words, x = [], block_hash
    for _ in range(_HASH_WORDS):
        x, digit = divmod(x, 36 * 36)
        words.append("z" + _HASH_CHARS[digit // 36] + _HASH_CHARS[digit % 36])
    words += (_PAD[i % len(_PAD)] for i in range(block_tokens - _HASH_WORDS))
    return " ".join(words) + " "


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


def _with_prefix(item: WorkloadItem, block_tokens: int) -> str:
    """`synthesize`, after the item's whole prefix blocks written as `block_text` (module docstring)."""
    whole = min(len(item.prefix_blocks), item.prompt_tokens // block_tokens)
    head = "".join(block_text(h, block_tokens) for h in item.prefix_blocks[:whole])
    rest = item.prompt_tokens - whole * block_tokens
    lead = item.prompt_text or LEADS.get(item.category, LEADS["chat"])
    if rest < approx_tokens(lead):  # no room for the lead: pad words only (the category is declared)
        return head + " ".join(_PAD[i % len(_PAD)] for i in range(rest))
    return head + synthesize(item.category, rest, lead)


def intake_fields(item: WorkloadItem, block_tokens: int = 0) -> IntakeFields:
    """THE definition of what the service sees of a workload item; nothing else of the item reaches
    classification, estimation or admission.

    `driftsched loadgen` sends exactly these fields (plus transport: model, streaming, and in benchmark
    mode the engine-only target length), and the simulator builds its core `Request` from them, so a
    live run and its simulation give the intake identical inputs. The prompt is `synthesize`d from the
    item (idempotent: an item whose text already has its length comes back unchanged). The item's
    category is declared when the service knows it (`CATEGORIES`); any other is not sent, and the
    prompt is classified on both sides. Never the true output length. With `block_tokens` (the
    workload's `Workload.block_tokens`) the item's prefix blocks open the text (module docstring).
    """
    done = item.prompt_text is not None and approx_tokens(item.prompt_text) >= item.prompt_tokens
    if block_tokens > 0 and item.prefix_blocks and item.prompt_tokens >= block_tokens and not done:
        text = _with_prefix(item, block_tokens)
    else:
        text = synthesize(item.category, item.prompt_tokens, item.prompt_text)
    return IntakeFields(
        prompt_text=text,
        prompt_tokens=approx_tokens(text),
        category=item.category if item.category in CATEGORIES else None,
        max_tokens=item.max_tokens,
    )
