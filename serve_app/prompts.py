"""Turning request bodies into prompts and counting their tokens, the way the serving engine will.

Admission and estimation need a prompt's length in tokens before the request is queued, so the ingress
renders and counts every prompt itself:

* `ApproxPrompts` (simulated engine): chat messages become a plain "role: text" transcript, and tokens
  are `approx_token_count` (about four characters per token).
* `TokenizerPrompts` (vLLM): chat messages are rendered with the model's own chat template, and the
  prompt is encoded with the model's tokenizer (transformers `AutoTokenizer`, loaded from the same
  model id or directory the replicas serve). The token ids travel to the replica, so the length the
  scheduler saw is exactly what vLLM runs and what `usage.prompt_tokens` reports.

Plain completion prompts get the tokenizer's special tokens (e.g. BOS), as vLLM's own server adds them;
a rendered chat template already contains them, so chat prompts are encoded without adding more.

Every rendered prompt also carries its prefix as chained block hashes (`driftsched.core.prefix`), in
blocks of `core.scheduler.placement.block_tokens`: of its token ids where the tokenizer gives them (so a
shared prefix hashes alike exactly when vLLM would find its KV blocks cached, block size being a
multiple of vLLM's), of its text otherwise. The ticket carries these hashes for cache-aware placement;
the prompt itself never reaches the scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from deployments.engine import approx_token_count
from deployments.replica_config import ReplicaConfig
from driftsched.core.prefix import chain_hashes, text_block_hashes


@dataclass(slots=True, frozen=True)
class RenderedPrompt:
    """A prompt as the engine will see it: text, its token count, token ids where known, and its
    prefix block hashes (module docstring)."""

    text: str
    num_tokens: int
    token_ids: list[int] | None = None
    prefix_blocks: tuple[int, ...] = ()


class Prompts(Protocol):
    """Renders and counts prompts for one engine backend."""

    def completion(self, prompt: str) -> RenderedPrompt: ...

    def chat(self, messages: list[dict[str, str]]) -> RenderedPrompt: ...


class Tokenizer(Protocol):
    """The two calls `TokenizerPrompts` makes on a transformers tokenizer."""

    def encode(self, text: str, *, add_special_tokens: bool) -> list[int]: ...

    def apply_chat_template(self, conversation: list[dict[str, str]], *, tokenize: bool,
                            add_generation_prompt: bool) -> object:
        """The rendered text when `tokenize` is False."""


class ApproxPrompts:
    """Transcript rendering and approximate counts, for the simulated engine; prefix hashes of the text
    (the simulated engine hashes the same text the same way)."""

    def __init__(self, block_tokens: int) -> None:
        self.block_tokens = block_tokens

    def _rendered(self, text: str) -> RenderedPrompt:
        return RenderedPrompt(text, approx_token_count(text),
                              prefix_blocks=text_block_hashes(text, self.block_tokens))

    def completion(self, prompt: str) -> RenderedPrompt:
        return self._rendered(prompt)

    def chat(self, messages: list[dict[str, str]]) -> RenderedPrompt:
        return self._rendered("\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:")


class TokenizerPrompts:
    """The model's chat template and tokenizer, for vLLM; prefix hashes of the token ids (module
    docstring)."""

    def __init__(self, tokenizer: Tokenizer, block_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.block_tokens = block_tokens

    @classmethod
    def load(cls, model: str, block_tokens: int) -> TokenizerPrompts:
        from transformers import AutoTokenizer  # comes with vLLM; not needed by the simulated engine

        return cls(AutoTokenizer.from_pretrained(model), block_tokens)

    def _rendered(self, text: str, ids: list[int]) -> RenderedPrompt:
        return RenderedPrompt(text, len(ids), ids, chain_hashes(ids, self.block_tokens))

    def completion(self, prompt: str) -> RenderedPrompt:
        return self._rendered(prompt, list(self.tokenizer.encode(prompt, add_special_tokens=True)))

    def chat(self, messages: list[dict[str, str]]) -> RenderedPrompt:
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # no template, or a template error (e.g. role order it rejects)
            raise ValueError(f"messages cannot be rendered with the model's chat template: {exc}") from None
        if not isinstance(text, str):
            raise ValueError(f"the model's chat template rendered {type(text).__name__}, not text")
        return self._rendered(text, list(self.tokenizer.encode(text, add_special_tokens=False)))


def make_prompts(replicas: ReplicaConfig, block_tokens: int) -> Prompts:
    """The prompt renderer matching the replicas' engine, hashing prefixes in `block_tokens` blocks."""
    if replicas.engine == "vllm":
        return TokenizerPrompts.load(replicas.model, block_tokens)
    return ApproxPrompts(block_tokens)
