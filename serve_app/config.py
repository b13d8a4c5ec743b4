"""The application's arguments (`args:` in config.yaml), parsed once by the application builder."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from deployments.replica_config import ReplicaConfig, perf_model_for
from deployments.snapshot_store import open_snapshot_store
from driftsched.core.config import DEFAULT_QUEUE_TIMEOUT_S, CoreConfig
from driftsched.core.errors import ConfigError
from driftsched.core.policy import PolicyContext
from policies import resolve_options


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, use_attribute_docstrings=True)


class AuthConfig(_Strict):
    """Where tenants' API keys and the /metrics scrape token come from. Secrets are compared in
    constant time and never logged."""

    demo_keys: dict[str, str] = Field(default_factory=dict)
    """Key -> tenant, inline. For local demos only: anything in config.yaml is public."""
    keys_env: str | None = "DRIFTSCHED_API_KEYS"
    """Environment variable (read by each ingress replica) holding JSON {"<key>": "<tenant>"}."""
    keys_file: str | None = None
    """File (read by each ingress replica) holding the same JSON mapping."""
    metrics_token_env: str | None = "DRIFTSCHED_METRICS_TOKEN"
    """Environment variable (read by each ingress replica) holding the bearer token that opens
    GET /metrics. With no token from any source, /metrics is disabled (404)."""
    metrics_token_file: str | None = None
    """File (read by each ingress replica) holding a metrics token (surrounding whitespace ignored)."""
    demo_metrics_token: str | None = Field(default=None, min_length=16)
    """A metrics token inline. For local demos only, like `demo_keys`: anything in config.yaml is public."""


class GatewayConfig(_Strict):
    """Ingress behaviour: deadlines, drift refresh, and Serve sizing."""

    queue_timeout_s: float = Field(default=DEFAULT_QUEUE_TIMEOUT_S, gt=0)
    """Longest a request may wait for a replica slot; past it the answer is 504. `bounded` takes it as
    its horizon unless `core.scheduler.policy_options.horizon_s` is given."""
    stall_timeout_s: float = Field(default=60.0, gt=0)
    """Longest wait for the next token from a replica before the request fails."""
    start_timeout_s: float = Field(default=10.0, gt=0)
    """Longest wait for a granted replica's first answer (a delta or its end); past it the replica is
    taken for dead (killed, or gone from Serve's routing) and the request resumes on another one."""
    max_body_bytes: int = Field(default=8 * 2**20, ge=1024)
    """Largest request body accepted; a bigger one is answered 413 before it is parsed."""
    default_max_tokens: int = Field(default=512, ge=1)
    """max_tokens of a chat request that gives none (completions default to OpenAI's 16)."""
    coalesce_chunks: bool = False
    """Streaming: send the deltas that are already waiting for a client as one SSE chunk (text joined),
    so a busy ingress writes fewer, bigger chunks; a lone delta still goes out at once. Off by default:
    under Ray Serve's default threading nothing is ever waiting (benchmarks/bench_token_path.py measured
    no merge at all), and clients that time every chunk as one token see exactly one per delta."""
    drift_refresh_s: float = Field(default=1.0, gt=0)
    """How often each ingress refreshes its local copy of the drift statistics."""
    drift_snapshot_path: str | None = None
    """Where the drift actor persists its statistics, so a restarted one starts from them: a file path,
    or redis://host[:port]/key for a Redis string (password from the environment variable
    DRIFTSCHED_REDIS_PASSWORD of the actor's process); none keeps them in memory only. On a multi-node
    cluster a file must be on storage every node mounts; the k8s manifests use the RayService's Redis."""
    replica_timeout_s: float = Field(default=5.0, gt=0)
    """A replica silent this long is dropped by the scheduler with its grants."""
    ingress_replicas: int = Field(default=1, ge=1)
    """Replicas of the HTTP ingress deployment (OpenAI endpoints, auth, errors, streaming)."""
    ingress_max_ongoing_requests: int = Field(default=20_000, ge=1)
    """Per ingress replica; must exceed the requests that can wait, or Serve's FIFO bypasses the policy."""
    ingress_num_cpus: float = Field(default=0.2, ge=0)
    """CPUs reserved per ingress replica actor."""

    @field_validator("drift_snapshot_path")
    @classmethod
    def _snapshot_location(cls, value: str | None) -> str | None:
        if value is not None:
            open_snapshot_store(value, env={})  # raises ValueError naming the fix; no I/O
        return value


class AppConfig(_Strict):
    """Everything under the application's `args:`."""

    core: CoreConfig
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    gateway: GatewayConfig = Field(default_factory=GatewayConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    benchmark_mode: bool = False
    """Honour `driftsched_target_tokens` in request bodies: the engine generates exactly that many tokens."""

    @field_validator("auth")
    @classmethod
    def _no_empty_keys(cls, value: AuthConfig) -> AuthConfig:
        if any(not key for key in value.demo_keys):
            raise ValueError("demo_keys has an empty key; remove it")
        return value

    @model_validator(mode="after")
    def _check(self) -> AppConfig:
        tenants = {t.name for t in self.core.tenants}
        unknown = sorted(set(self.auth.demo_keys.values()) - tenants)
        if unknown:
            raise ValueError(f"auth.demo_keys name unknown tenants {unknown}; add them under core.tenants")
        slots = self.replicas.most_replicas * (self.replicas.max_num_seqs + self.replicas.engine_queue_slots)
        waiting = self.core.scheduler.max_queued_total + slots
        capacity = self.gateway.ingress_max_ongoing_requests * self.gateway.ingress_replicas
        if capacity <= waiting:
            raise ValueError(
                f"gateway.ingress_max_ongoing_requests x ingress_replicas = {capacity} must exceed the "
                f"requests that can be queued or running ({waiting}); raise ingress_max_ongoing_requests"
            )
        self._check_cross_sections()
        return self

    def _check_cross_sections(self) -> None:
        """Settings of one section that only make sense against another's."""
        heartbeat, timeout = self.replicas.heartbeat_s, self.gateway.replica_timeout_s
        if timeout <= 2 * heartbeat:
            raise ValueError(
                f"gateway.replica_timeout_s ({timeout:g}) must exceed twice replicas.heartbeat_s "
                f"({heartbeat:g}), or live replicas are dropped between heartbeats; raise "
                "gateway.replica_timeout_s or lower replicas.heartbeat_s"
            )
        limit = self.core.scheduler.max_request_tokens
        if self.replicas.engine == "vllm":
            context = self.replicas.engine_args.get("max_model_len")
            where = "replicas.engine_args.max_model_len"
        else:
            context = perf_model_for(self.replicas).kv_capacity_tokens
            where = f"the KV capacity of one simulated {self.replicas.model} replica"
        if isinstance(context, int) and limit > context:
            raise ValueError(
                f"core.scheduler.max_request_tokens ({limit}) exceeds {where} ({context}): admitted "
                "requests could never run; lower core.scheduler.max_request_tokens"
            )
        # A prefix block that is not a whole number of vLLM's KV blocks would count a partly cached block
        # as cached; vLLM's default block sizes (16 on GPU, 128 on CPU) divide the default 256.
        kv_block = self.replicas.engine_args.get("block_size") if self.replicas.engine == "vllm" else None
        block_tokens = self.core.scheduler.placement.block_tokens
        if isinstance(kv_block, int) and kv_block > 0 and block_tokens % kv_block:
            raise ValueError(
                f"core.scheduler.placement.block_tokens ({block_tokens}) must be a multiple of "
                f"replicas.engine_args.block_size ({kv_block}), vLLM's KV block; set it to "
                f"{max(1, round(block_tokens / kv_block)) * kv_block}"
            )

    def scheduler_core(self) -> CoreConfig:
        """The core config the scheduler runs: `core`, with the policy's options completed from this
        deployment (`policies.resolve_options`: e.g. `bounded`'s horizon from `gateway.queue_timeout_s`,
        a tenant's from its `latency_slo_s`). Imports the policy, an out-of-tree one too."""
        scheduler = self.core.scheduler
        context = PolicyContext.of(self.core, self.gateway.queue_timeout_s)
        options = resolve_options(scheduler.policy, scheduler.policy_options, context)
        return self.core.model_copy(
            update={"scheduler": scheduler.model_copy(update={"policy_options": options})}
        )

    def fingerprint(self) -> str:
        """Short hash of everything but the keys: names this configuration's actors."""
        data = self.model_dump(mode="json", exclude={"auth"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]


def parse_app_config(args: Mapping[str, object]) -> AppConfig:
    """Validate the application's args, one readable line per problem."""
    try:
        return AppConfig.model_validate(args)
    except ValidationError as exc:
        lines = [_problem(err) for err in exc.errors()]
        raise ConfigError("invalid DriftSched application args:\n" + "\n".join(lines)) from None


def _problem(err: ErrorDetails) -> str:
    """One line: the field's path, what is wrong, and the value given (never under `auth`: secrets)."""
    path = ".".join(str(p) for p in err["loc"])
    message = err["msg"].removeprefix("Value error, ")
    if not path:  # a check across sections: its message names the fields
        return f"  {message}"
    value = err.get("input")
    scalar = value is None or isinstance(value, str | int | float)
    shown = f" (got {value!r:.80})" if scalar and not path.startswith("auth") else ""
    return f"  {path}: {message}{shown}"
