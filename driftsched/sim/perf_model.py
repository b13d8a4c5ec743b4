"""Step-time and memory model of vLLM-style continuous batching on one NVIDIA L4.

One engine iteration ("step") reads every weight once plus the KV cache of every sequence in the batch, and
runs the matmuls for the new tokens. The model is a roofline with a measured mixed-step penalty::

    mem_s     = (weight_bytes + kv_bytes_per_token * context_tokens) / read_bandwidth
    compute_s = (2 * matmul_params * new_tokens + 4 * layers * attn_width * prefill_pairs) / prefill_flops
    step_s    = step_overhead + max(mem_s * (prefill_step_factor if prefill else 1), compute_s)

``prefill_pairs`` counts (query, key) pairs of the prefill chunks: a chunk of ``c`` tokens after ``p``
cached ones has ``c * (p + c / 2)``. Decode attention is memory traffic and sits in ``mem_s``.

Where each constant comes from (shared/L4_PERF_FACTS.md; measurements unless marked *derived*):

* memory 22.49 GiB: nvidia-smi total 23,034 MiB.
* read_bandwidth 262 GB/s: measured read microbenchmark (87% of the 300 GB/s datasheet figure).
* step_overhead 1.2 ms: *derived* fit of batch-1 decode (Mistral-7B AWQ 16.3 ms, Qwen3-0.6B 5.78 ms).
* prefill_flops 44 TFLOP/s BF16: *derived* effective prefill rate, 40-47 TFLOP/s (0.33-0.39 of 121),
  which is what the 8k/32k single-user TTFTs of Qwen3-0.6B/1.7B imply once attention FLOPs are counted.
* FP8 prefill: scaled by sustained FP8 / BF16 matmul throughput, 117.8 / 57.0.
* prefill_step_factor 2: steps carrying prefill chunks take ~2x longer (held-queue runs reach 53-54% of
  the memory-bound decode ceiling).
* request_overhead 4 ms: *derived* per-request cost in TTFT, outside the GPU step loop.
* KV capacity: gpu_memory_utilization 0.9 of memory, minus weights, minus ~1 GiB activation reserve.

Assumptions: KV is counted in tokens, not 16-token blocks; CUDA graphs on (fixed overhead does not grow
with batch size); tensor parallelism 1. Prefix caching is the engine's (`driftsched.sim.engine`): a cached
prefix of ``p`` tokens only moves the first chunk's start, so it costs ``c * (p + c / 2)`` pairs, not a
prefill.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class GpuSpec:
    """Memory, bandwidth and compute of one GPU, with effective (measured) rates beside the datasheet."""

    name: str = "NVIDIA L4"
    memory_gib: float = 22.49
    peak_bandwidth: float = 300e9
    peak_bf16_flops: float = 121e12
    read_bandwidth: float = 262e9
    prefill_flops_bf16: float = 44e12
    fp8_matmul_speedup: float = 117.8 / 57.0
    step_overhead_s: float = 1.2e-3
    prefill_step_factor: float = 2.0
    request_overhead_s: float = 4e-3


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Size and attention shape of a decoder-only model; enough to count bytes and FLOPs per step."""

    name: str
    num_params: float
    embedding_params: float  # input embedding + untied lm_head; stored at 2 bytes, no prefill matmul
    bytes_per_param: float  # of the other (matmul) weights
    num_layers: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    kv_bytes_per_elem: int = 2
    fp8_compute: bool = False

    @property
    def weight_bytes(self) -> float:
        return self.matmul_params * self.bytes_per_param + self.embedding_params * 2

    @property
    def matmul_params(self) -> float:
        return self.num_params - self.embedding_params

    @property
    def kv_bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.kv_bytes_per_elem


# Shapes from the models' published configs (vocab x hidden for the embeddings).
LLAMA_3_1_8B_BF16 = ModelShape("Llama-3.1-8B BF16", 8.03e9, 2 * 128256 * 4096, 2.0, 32, 32, 8, 128)
LLAMA_3_1_8B_FP8 = ModelShape(
    "Llama-3.1-8B FP8", 8.03e9, 2 * 128256 * 4096, 1.0, 32, 32, 8, 128, fp8_compute=True
)
QWEN3_1_7B_BF16 = ModelShape("Qwen3-1.7B BF16", 1.72e9, 151936 * 2048, 2.0, 28, 16, 8, 128)
QWEN3_0_6B_BF16 = ModelShape("Qwen3-0.6B BF16", 0.596e9, 151936 * 1024, 2.0, 28, 16, 8, 128)
MISTRAL_7B_AWQ = ModelShape("Mistral-7B AWQ", 7.24e9, 2 * 32000 * 4096, 0.5, 32, 32, 8, 128)
L4 = GpuSpec()

MODEL_SHAPES: dict[str, ModelShape] = {
    "llama-3.1-8b-bf16": LLAMA_3_1_8B_BF16,
    "llama-3.1-8b-fp8": LLAMA_3_1_8B_FP8,
    "qwen3-1.7b-bf16": QWEN3_1_7B_BF16,
    "qwen3-0.6b-bf16": QWEN3_0_6B_BF16,
    "mistral-7b-awq": MISTRAL_7B_AWQ,
}
"""The presets by the names configs and command lines use (`--model`, `replicas.model`)."""


class PerfModel:
    """Step time, prefill time and KV capacity of one vLLM replica (one model on one GPU)."""

    __slots__ = (
        "_attn_flops_per_pair",
        "_flops",
        "_kv_read_s",
        "_matmul_flops_per_token",
        "_weight_read_s",
        "engine_queue_slots",
        "gpu",
        "kv_capacity_tokens",
        "max_num_batched_tokens",
        "max_num_seqs",
        "model",
    )

    def __init__(
        self,
        model: ModelShape = LLAMA_3_1_8B_BF16,
        gpu: GpuSpec = L4,
        *,
        gpu_memory_utilization: float = 0.9,
        activation_reserve_gib: float = 1.0,
        max_num_seqs: int = 256,
        max_num_batched_tokens: int = 2048,
        engine_queue_slots: int = 0,
    ) -> None:
        if engine_queue_slots < 0:
            raise ValueError(f"engine_queue_slots must be >= 0, got {engine_queue_slots}")
        self.model, self.gpu = model, gpu
        self.max_num_seqs = max_num_seqs
        self.engine_queue_slots = engine_queue_slots
        self.max_num_batched_tokens = max_num_batched_tokens
        free = (gpu.memory_gib * gpu_memory_utilization - activation_reserve_gib) * GIB
        free -= model.weight_bytes
        self.kv_capacity_tokens = max(0, int(free // model.kv_bytes_per_token))
        if self.kv_capacity_tokens == 0:
            raise ValueError(
                f"{model.name} ({model.weight_bytes / GIB:.1f} GiB of weights) leaves no KV cache on "
                f"{gpu.name} at gpu_memory_utilization={gpu_memory_utilization}: use a smaller model"
            )
        self._weight_read_s = model.weight_bytes / gpu.read_bandwidth
        self._kv_read_s = model.kv_bytes_per_token / gpu.read_bandwidth
        speedup = gpu.fp8_matmul_speedup if model.fp8_compute else 1.0
        self._flops = gpu.prefill_flops_bf16 * speedup
        self._matmul_flops_per_token = 2 * model.matmul_params / self._flops
        attn_width = model.num_q_heads * model.head_dim
        self._attn_flops_per_pair = 4 * model.num_layers * attn_width / self._flops

    def step_time_s(
        self,
        num_prefill_tokens: int,
        num_decode_seqs: int,
        total_context_tokens: int,
        prefill_attention_pairs: float | None = None,
    ) -> float:
        """Seconds for one iteration; context is the cached tokens read (default pairs: one fresh chunk)."""
        if num_prefill_tokens <= 0 and num_decode_seqs <= 0:
            return 0.0
        mem = self._weight_read_s + self._kv_read_s * total_context_tokens
        compute = self._matmul_flops_per_token * (num_prefill_tokens + num_decode_seqs)
        if num_prefill_tokens > 0:
            mem *= self.gpu.prefill_step_factor
            if prefill_attention_pairs is None:
                prefill_attention_pairs = num_prefill_tokens * num_prefill_tokens / 2
            compute += self._attn_flops_per_pair * prefill_attention_pairs
        return self.gpu.step_overhead_s + (mem if mem > compute else compute)

    def decode_run_time_s(self, num_seqs: int, context_tokens: int, num_steps: int) -> float:
        """Seconds for ``num_steps`` pure-decode steps of a fixed batch whose context grows by one a step."""
        if num_steps <= 0 or num_seqs <= 0:
            return 0.0
        k = num_steps
        a = self._weight_read_s + self._kv_read_s * context_tokens
        b = self._kv_read_s * num_seqs
        c = self._matmul_flops_per_token * num_seqs
        # The first j steps are compute-bound (c > a + b*i), the rest memory-bound.
        j = 0 if a >= c else min(k, math.ceil((c - a) / b))
        mem_steps = (k - j) * a + b * (k * (k - 1) - j * (j - 1)) / 2
        return k * self.gpu.step_overhead_s + j * c + mem_steps

    def decode_run_until(
        self, num_seqs: int, context_tokens: int, horizon_s: float, max_steps: int
    ) -> tuple[int, float]:
        """Fewest steps in ``[1, max_steps]`` whose ``decode_run_time_s`` reaches ``horizon_s`` (else
        ``max_steps``), with that time.

        The guess solves ``U(k) = horizon`` for the upper bound ``U(k) = k * (overhead + max(a, c))
        + b * k * (k - 1) / 2`` of the run time (names as in ``decode_run_time_s``), so it is at most the
        answer, and is then walked up. Step times are at least ``step_overhead_s``, so run times grow
        strictly with k and this is the answer a bisection over ``decode_run_time_s`` finds.
        """
        a = self._weight_read_s + self._kv_read_s * context_tokens
        b = self._kv_read_s * num_seqs
        linear = self.gpu.step_overhead_s + max(a, self._matmul_flops_per_token * num_seqs) - b / 2
        guess = (math.sqrt(linear * linear + 2 * b * horizon_s) - linear) / b if b > 0 else max_steps
        k = min(max_steps, max(1, math.ceil(guess)))
        took = self.decode_run_time_s(num_seqs, context_tokens, k)
        if took >= horizon_s:  # float rounding may overshoot the guess by a step
            while k > 1:
                shorter = self.decode_run_time_s(num_seqs, context_tokens, k - 1)
                if shorter < horizon_s:
                    break
                k, took = k - 1, shorter
            return k, took
        while k < max_steps:
            k += 1
            took = self.decode_run_time_s(num_seqs, context_tokens, k)
            if took >= horizon_s:
                break
        return k, took

    def balanced_token_budget(self, granularity: int = 256) -> int:
        """The step token budget (``max_num_batched_tokens``) whose prefill chunk costs a running decode
        the least: the chunk whose matmuls take as long as a mixed step's memory reads with the KV cache
        full, rounded to ``granularity``.

        Why: a step carrying a chunk already reads weights and KV for ``prefill_step_factor`` times a
        decode step, so a chunk up to this size rides on reads the step makes anyway; beyond it every
        running sequence waits on the chunk's matmuls, which raises its time per output token and
        lowers the tokens a step moves. Much below it, a prompt needs more mixed steps, each paying the
        factor. On an L4 with Llama-3.1-8B FP8 it is 1,024 (a 4,096-token chunk makes a step ~0.6 s).
        """
        full_kv = self._weight_read_s + self._kv_read_s * self.kv_capacity_tokens
        reads = self.gpu.prefill_step_factor * full_kv
        return max(granularity, granularity * round(reads / self._matmul_flops_per_token / granularity))

    def prefill_time_s(self, prompt_tokens: int) -> float:
        """Time to first token of one request on an idle replica (chunked prefill + request overhead)."""
        total, done = self.gpu.request_overhead_s, 0
        while done < prompt_tokens:
            chunk = min(self.max_num_batched_tokens, prompt_tokens - done)
            total += self.step_time_s(chunk, 0, done, chunk * (done + chunk / 2))
            done += chunk
        return total

    def decode_step_s(self, batch: int, context_per_seq: int) -> float:
        """One pure-decode step (time per output token) of ``batch`` sequences of equal context."""
        return self.step_time_s(0, batch, batch * context_per_seq)

    def saturated_throughput_rps(
        self, mean_prompt_tokens: float, mean_output_tokens: float, mean_resident_tokens: float
    ) -> float:
        """Estimated requests/s of a replica kept full; resident tokens: time-averaged KV per sequence.

        Batch size is bounded by max_num_seqs and by KV capacity; by Little's law a batch of ``B`` admits
        ``B / mean_output`` requests a step, whose prompts are prefilled in chunks that each make a step
        mixed. Average step time mixes decode-only and prefill-carrying steps in that proportion.
        """
        batch = max(1.0, min(self.max_num_seqs, self.kv_capacity_tokens / mean_resident_tokens))
        admits_per_step = batch / max(1.0, mean_output_tokens)
        chunks = math.ceil(mean_prompt_tokens / self.max_num_batched_tokens)
        mixed_fraction = min(1.0, admits_per_step * chunks)
        context = int(batch * mean_resident_tokens)
        prefill_per_mixed = int(admits_per_step * mean_prompt_tokens / mixed_fraction)
        mixed = self.step_time_s(max(1, prefill_per_mixed), int(batch), context)
        decode = self.step_time_s(0, int(batch), context)
        step = mixed_fraction * mixed + (1 - mixed_fraction) * decode
        return admits_per_step / step
