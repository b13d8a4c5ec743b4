"""`driftsched make-tiny-model DIR`: a tiny random Llama with a real tokenizer, for vLLM on CPU.

No model hub is needed. The command trains a byte-level BPE tokenizer (a few hundred tokens) on a small
built-in English corpus, wraps it as a `PreTrainedTokenizerFast` with Llama-style special tokens
(`<s>` is prepended to plain prompts) and a simple chat template, and saves it beside a randomly
initialised 2-layer Llama (hidden 128, 4 heads, 2 KV heads, head_dim 32 — vLLM's CPU attention
accepts head sizes 32, 64, 80 and up, not 16). The directory is about 2 MB and builds in seconds.
`hidden_size` and `num_layers` make it heavier (heads of 32, half as many KV heads, an MLP twice as
wide): `benchmarks/bench_vllm.py` uses that to keep the engine, not the front-end, the bottleneck on
a fast CPU, as the GPU is on an L4 node.

The model's output is random tokens; tests and benchmarks fix output lengths through
`min_tokens`/`ignore_eos` (benchmark mode), never through the scheduler. torch, transformers and
tokenizers are imported lazily: they come with the vLLM install, not the base one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>"]

_TEXT = (
    "the scheduler admits requests from many tenants and orders them by policy while replicas pull work "
    "when they have free slots a short answer and a long report arrive in the same queue estimates of "
    "output length drift as prompts change so every finished request reports what it produced summarize "
    "this document write a report explain the code answer the question in one line hello world please "
    "thank you what why how when where which token latency throughput memory cache batch prefill decode "
    "model engine request response stream usage error quota tier weight fair share shortest job first"
)


def _corpus(lines: int = 400) -> list[str]:
    """Deterministic pseudo-sentences over a fixed vocabulary, with digits and punctuation."""
    vocab, out = _TEXT.split(), []
    for i in range(lines):
        words = [vocab[(i * 7 + j * 13) % len(vocab)] for j in range(5 + i % 11)]
        out.append(" ".join(words).capitalize() + (". " if i % 3 else "? ") + str(i))
    out.append("0123456789 ,.;:!?'\"()[]{}<>/\\|@#$%^&*-+=_~`\n\t")
    return out


def check_shape(hidden_size: int, num_layers: int) -> None:
    """Raise ValueError unless vLLM's CPU attention can run the model (heads of 32, KV heads half)."""
    if hidden_size < 64 or hidden_size % 64 or num_layers < 1:
        raise ValueError(
            f"hidden_size must be a multiple of 64 (heads of 32, KV heads half as many) and num_layers "
            f">= 1, got {hidden_size} and {num_layers}; try 128 and 2"
        )


def build_tiny_model(
    out_dir: Path, vocab_size: int = 512, seed: int = 0, hidden_size: int = 128, num_layers: int = 2
) -> Path:
    """Write the tokenizer and a random Llama (2 layers of 128 by default) to `out_dir`; returns it."""
    check_shape(hidden_size, num_layers)
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", bos)])
    # transformers leaves the tokenizer's and the model's __init__ unannotated (no-untyped-call)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>",
        model_max_length=4096)
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(fast), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=hidden_size // 32,
        num_key_value_heads=hidden_size // 64, head_dim=32, max_position_embeddings=4096,
        bos_token_id=bos, eos_token_id=tok.token_to_id("</s>"), pad_token_id=tok.token_to_id("</s>"),
        tie_word_embeddings=False, dtype="float32",
    )
    LlamaForCausalLM(config).save_pretrained(  # type: ignore[no-untyped-call]  # as above
        out_dir, safe_serialization=True)
    # the template also lives in tokenizer_config.json; a copy keeps it visible to tools reading only this
    (out_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, help="directory to write (created if missing)")
    parser.add_argument("--vocab-size", type=int, default=512, help="BPE vocabulary size (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed")


def run(args: argparse.Namespace) -> int:
    out = build_tiny_model(args.out_dir, vocab_size=args.vocab_size, seed=args.seed)
    size = sum(p.stat().st_size for p in out.iterdir() if p.is_file())
    print(json.dumps({"model_dir": str(out.resolve()), "bytes": size}))
    return 0
