"""Workload classification: a category per request.

Category rules, first match wins (deterministic, admission-time features only):

1. the caller's category, if it is one of `CATEGORIES`;
2. content cues in the prompt text (case-insensitive): code fences or code words → `code`;
   "summar", "tl;dr", "key points" → `summarize`; "essay", "article", "report", "story",
   "write a detailed" → `longform`;
3. prompt length: a prompt of at least `long_prompt_tokens` → `summarize`
   (long inputs are mostly documents to condense);
4. `max_tokens` at or below `short_max_tokens` → `qa`;
5. otherwise `chat`.

A request's size is not a class here: policies order by the drift-corrected estimate itself.
"""

from __future__ import annotations

import re

from driftsched.core.config import CATEGORIES, ClassifierConfig

_CUES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("code", re.compile(r"```|\bdef |\bclass |\bfunction\b|\bcode\b|\bpython\b|\bsql\b|\bbug\b")),
    ("summarize", re.compile(r"summar|tl;dr|key points|condense")),
    ("longform", re.compile(r"\bessay\b|\barticle\b|\breport\b|\bstory\b|write a detailed")),
)
_CUE_SCAN_CHARS = 4000  # cues sit in the instruction; do not scan megabytes of pasted context


class Classifier:
    """Rule-based category assignment (rules in the module docstring)."""

    def __init__(self, config: ClassifierConfig | None = None) -> None:
        self.config = config or ClassifierConfig()
        self._known = frozenset(CATEGORIES)

    def category(
        self,
        given: str | None,
        prompt_tokens: int,
        max_tokens: int,
        prompt_text: str | None = None,
    ) -> str:
        """The request's category from admission-time features."""
        if given is not None and given in self._known:
            return given
        if prompt_text:
            text = prompt_text[:_CUE_SCAN_CHARS].lower()
            for name, pattern in _CUES:
                if pattern.search(text):
                    return name
        if prompt_tokens >= self.config.long_prompt_tokens:
            return "summarize"
        if max_tokens <= self.config.short_max_tokens:
            return "qa"
        return "chat"
