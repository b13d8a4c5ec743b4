"""`Gateway._pump` driven with fake scheduler and LLM handles (plain objects, async generators).

Every scenario ends with exactly one terminal item on the lease (None after the final delta, or a
`GatewayError`) and exactly one release of the slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import RayActorError

from deployments.engine import EngineErrorCode, EngineFailure, GenerationRequest, TokenDelta, Usage
from deployments.scheduler_actor import AcquireResult, AcquireStatus, Answers, Release, Submission
from driftsched.core.config import parse_core_config
from driftsched.core.intake import Intake
from serve_app.config import GatewayConfig
from serve_app.errors import ErrorCode, GatewayError
from serve_app.gateway import Gateway, Sampling
from serve_app.prompts import RenderedPrompt

PROMPT = RenderedPrompt("tell me a story", 4)
HANG = object()  # a script step: the replica never answers again


def tok(text: str, finish: str | None = None, usage: Usage | None = None) -> TokenDelta:
    return TokenDelta(text, 1, finish, usage)


class FakeResponse:
    """A streaming response as `DeploymentHandle.options(stream=True)` returns one."""

    def __init__(self, script: list[Any]) -> None:
        self._gen = self._run(script)
        self.cancelled = False

    @staticmethod
    async def _run(script: list[Any]) -> AsyncIterator[TokenDelta]:
        for step in script:
            if step is HANG:
                await asyncio.Event().wait()
            if isinstance(step, BaseException):
                raise step
            yield step

    def __anext__(self) -> Any:
        return self._gen.__anext__()

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLLM:
    """Replica id -> the scripts of its successive runs; records what each run was asked."""

    scripts: dict[str, list[list[Any]]]
    runs: list[tuple[str, GenerationRequest]] = field(default_factory=list)
    responses: list[FakeResponse] = field(default_factory=list)

    def options(self, stream: bool) -> FakeLLM:
        assert stream
        return self

    @property
    def generate(self) -> FakeLLM:
        return self

    def remote(self, run: GenerationRequest, target_replica: str) -> FakeResponse:
        self.runs.append((target_replica, run))
        response = FakeResponse(self.scripts[target_replica].pop(0))
        self.responses.append(response)
        return response


class _Method:
    def __init__(self, fn: Any) -> None:
        self.remote = fn


class FakeScheduler:
    """Answers each resumption (a submission with `resume` set) with the next replica in `grants`,
    or "expired" once they run out; `release_many` records its releases."""

    def __init__(self, grants: list[str] | None = None, resume_error: Exception | None = None) -> None:
        self.grants = list(grants or [])
        self.resume_error = resume_error
        self.resumes: list[tuple[str, int, bool]] = []
        self.releases: list[tuple[str, int | None, str | None]] = []
        self.release_many = _Method(self._release_many)
        self.submit = _Method(self._submit)
        self.poll = _Method(self._poll)
        self.cancel = _Method(lambda rid: asyncio.sleep(0))

    def _release_many(self, items: list[Release]) -> Any:
        """Records at the call, as a Ray call is sent at once; returns the awaitable reply."""
        self.releases += [(item.replica_id, item.output_tokens, item.timings and item.timings.outcome)
                          for item in items]
        return asyncio.sleep(0)

    async def _submit(self, client: str, items: list[Submission]) -> Answers:
        results = {}
        for item in items:
            assert item.resume is not None, "the pump only resubmits stopped runs"
            stopped = item.resume
            self.resumes.append((stopped.replica_id, stopped.generated, stopped.replica_failed))
            if self.resume_error is not None:
                raise self.resume_error
            rid = item.ticket.request_id
            if not self.grants:
                results[rid] = AcquireResult(AcquireStatus.EXPIRED)
            else:
                next_replica = self.grants.pop(0)
                results[rid] = AcquireResult(AcquireStatus.GRANTED, next_replica, grant=stopped.grant + 1)
        return Answers("epoch", results)

    async def _poll(self, client: str, wait_s: float) -> Answers:
        await asyncio.sleep(wait_s)
        return Answers("epoch", {})


def run_pump(scheduler: FakeScheduler, llm: FakeLLM, **gateway: float) -> list[Any]:
    """Prepare one request, pump it from replica r0, and return every item the lease delivered."""
    config = GatewayConfig(**{"stall_timeout_s": 5.0, "start_timeout_s": 5.0, "queue_timeout_s": 5.0,
                              **gateway})
    intake = Intake(parse_core_config({"tenants": [{"name": "a"}]}))

    async def scenario() -> list[Any]:
        gw = Gateway(intake, config, scheduler, llm, benchmark_mode=False)
        prepared = gw.prepare("a", PROMPT, 20, 20, Sampling(), None)
        lease = gw.start(prepared, "r0", 0.0)
        items = []
        while True:
            item = await asyncio.wait_for(lease.next(), 10.0)
            items.append(item)
            if item is None or isinstance(item, GatewayError):
                break
        await asyncio.wait_for(lease.task, 1.0)
        assert lease.deltas.empty()  # nothing after the terminal item
        return items

    return asyncio.run(scenario())


def texts(items: list[Any]) -> str:
    return "".join(i.text for i in items if isinstance(i, TokenDelta))


def test_a_finished_run_streams_every_delta_then_none_and_releases_with_its_tokens():
    llm = FakeLLM({"r0": [[tok("a"), tok("b"), tok("c", "stop", Usage(4, 3))]]})
    scheduler = FakeScheduler()
    items = run_pump(scheduler, llm)
    assert texts(items) == "abc" and items[-1] is None
    assert items[-2].usage == Usage(4, 3) and items[-2].finish_reason == "stop"
    assert scheduler.releases == [("r0", 3, "ok")]
    assert scheduler.resumes == []


def test_an_engine_error_is_the_terminal_item_and_the_slot_is_released_as_not_completed():
    failure = EngineFailure(EngineErrorCode.ENGINE_DEAD, "the engine stopped")
    llm = FakeLLM({"r0": [[tok("a"), TokenDelta("", 0, "error", error=failure)]]})
    scheduler = FakeScheduler()
    items = run_pump(scheduler, llm)
    err = items[-1]
    assert isinstance(err, GatewayError)
    assert (err.status, err.code, err.message) == (503, ErrorCode.ENGINE_DEAD, "the engine stopped")
    assert scheduler.releases == [("r0", None, "engine_error")]


def test_a_preempted_run_resumes_elsewhere_with_exact_tokens_and_one_usage():
    llm = FakeLLM({
        "r0": [[tok("a"), tok("b"), tok("c", "preempted")]],
        "r1": [[tok("d"), tok("e", "stop", Usage(7, 2))]],  # the engine counts the resumed run only
    })
    scheduler = FakeScheduler(grants=["r1"])
    items = run_pump(scheduler, llm)
    assert texts(items) == "abcde"
    usages = [i.usage for i in items if isinstance(i, TokenDelta) and i.usage is not None]
    assert usages == [Usage(4, 5)]  # the client's own prompt, every generated token
    assert [i.finish_reason for i in items[:-1]] == [None, None, None, None, "stop"]
    assert scheduler.resumes == [("r0", 3, False)]
    (first_replica, first), (second_replica, second) = llm.runs
    assert (first_replica, second_replica) == ("r0", "r1")
    assert second.prompt == first.prompt + "abc"
    assert (second.prompt_tokens, second.max_tokens) == (first.prompt_tokens + 3, first.max_tokens - 3)
    assert llm.responses[0].cancelled
    assert scheduler.releases == [("r1", 5, "ok")]


def test_a_lost_replica_fails_over_and_the_stream_goes_on():
    llm = FakeLLM({
        "r0": [[tok("a"), RayActorError()]],
        "r1": [[tok("b"), tok("c", "stop", Usage(5, 2))]],
    })
    scheduler = FakeScheduler(grants=["r1"])
    items = run_pump(scheduler, llm)
    assert texts(items) == "abc" and items[-1] is None
    assert scheduler.resumes == [("r0", 1, True)]  # told the replica failed: it is dropped
    assert scheduler.releases == [("r1", 3, "ok")]


def test_a_granted_replica_that_never_answers_is_taken_for_lost():
    llm = FakeLLM({"r0": [[HANG]], "r1": [[tok("x", "stop", Usage(4, 1))]]})
    scheduler = FakeScheduler(grants=["r1"])
    items = run_pump(scheduler, llm, start_timeout_s=0.05)
    assert texts(items) == "x" and items[-1] is None
    assert scheduler.resumes == [("r0", 0, True)]


def test_no_replica_within_the_deadline_after_a_failover_ends_with_a_timeout():
    llm = FakeLLM({"r0": [[tok("a"), RayActorError()]]})
    scheduler = FakeScheduler(grants=[])
    items = run_pump(scheduler, llm)
    err = items[-1]
    assert isinstance(err, GatewayError) and (err.status, err.code) == (504, ErrorCode.QUEUE_TIMEOUT)
    assert scheduler.releases == [("r0", None, "timeout")]


def test_an_unexpected_exception_ends_with_an_internal_error_item():
    llm = FakeLLM({"r0": [[tok("a"), RuntimeError("boom")]]})
    scheduler = FakeScheduler()
    items = run_pump(scheduler, llm)
    err = items[-1]
    assert isinstance(err, GatewayError)
    assert (err.status, err.type, err.code) == (500, "api_error", ErrorCode.INTERNAL)
    assert scheduler.releases == [("r0", None, "replica_error")]
    assert llm.responses[0].cancelled


def test_an_exception_while_resuming_also_ends_with_an_internal_error_item():
    llm = FakeLLM({"r0": [[tok("a", "preempted")]]})
    scheduler = FakeScheduler(resume_error=RuntimeError("scheduler bug"))
    items = run_pump(scheduler, llm)
    assert isinstance(items[-1], GatewayError) and items[-1].code is ErrorCode.INTERNAL
    assert len(scheduler.releases) == 1


def test_a_stall_mid_stream_ends_with_a_504_item():
    llm = FakeLLM({"r0": [[tok("a"), HANG]]})
    scheduler = FakeScheduler(grants=["r1"])
    items = run_pump(scheduler, llm, stall_timeout_s=0.05)
    err = items[-1]
    assert texts(items) == "a"
    assert isinstance(err, GatewayError)
    assert (err.status, err.type, err.code) == (504, "timeout_error", ErrorCode.REPLICA_STALLED)
    assert scheduler.resumes == []  # a stall mid-stream is the replica's answer, not its loss
    assert scheduler.releases == [("r0", None, "timeout")]
