"""HTTP fuzzing of the live app (Hypothesis): bodies, headers, paths and methods, lying Content-Lengths.

Every answer must have a status below 500; every error (status >= 400) an OpenAI-style JSON error body;
a streamed 200 must end with `[DONE]` or an error event; no request may outlive the client's timeout.
Afterwards the service must still be healthy and serve a normal completion. Examples are derandomised
and the example database is off, so every run (and CI) sends the same requests.

One exception to "OpenAI-style body": a request whose framing is broken (a Content-Length shorter than
the body sent, so the leftover bytes parse as a malformed next request) is answered by Serve's HTTP
server itself, before any application code runs, with its fixed plain-text 400.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections import Counter
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from conftest import app_args
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driftsched.core.config import CATEGORIES

pytestmark = pytest.mark.slow

ARGS = app_args(**{
    "replicas.time_scale": 0.01,
    "core.scheduler.max_queued_total": 200,
    "core.scheduler.max_request_tokens": 1024,
    "gateway.default_max_tokens": 8,
    "gateway.queue_timeout_s": 10,
})
MODEL = "driftsched-sim"
GOLD = "Bearer sk-test-gold"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)  # per read: a request silent this long has hung
MAX_REQUEST_S = 30.0  # a whole (streamed) answer
SERVER_PARSER_400 = b"Invalid HTTP request received."
SENT: Counter[int] = Counter()  # status -> answers, over the whole module

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module")
def base_url(serve_cluster):
    url = serve_cluster.deploy(ARGS)
    with httpx.Client(timeout=TIMEOUT) as client:  # the replicas register within a heartbeat or two
        for _ in range(50):
            if _complete(client, url, False).status_code == 200:
                break
            time.sleep(0.2)
    return url


@pytest.fixture(scope="module")
def client(base_url):
    with httpx.Client(timeout=TIMEOUT) as c:
        yield c


def _complete(client: httpx.Client, base_url: str, chat: bool) -> httpx.Response:
    if chat:
        body: dict[str, Any] = {"messages": [{"role": "user", "content": "hello"}]}
    else:
        body = {"prompt": "hello"}
    return client.post(base_url + ("/chat/completions" if chat else "/completions"),
                       json={**body, "model": MODEL, "max_tokens": 3}, headers={"Authorization": GOLD})


# -- strategies ----------------------------------------------------------------------------------

_TEXT = st.one_of(
    st.text(max_size=30),
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=3),  # lone surrogates
    st.sampled_from(["", " ", "\x00", "日本語のテキスト", "🙂" * 20, "{valid}", "%s%n", "x" * 3000]),
)
_INTS = st.one_of(st.integers(), st.sampled_from([0, -1, 2**31, 2**63, 2**64, -(2**63) - 1, 10**30]))
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), _INTS, st.floats(), _TEXT),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_TEXT, inner, max_size=4),
    max_leaves=10,
)
_ROLES = ["system", "developer", "user", "assistant", "tool"]
_PART = st.fixed_dictionaries({"type": st.just("text"), "text": _TEXT})
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(_ROLES)}, optional={"content": _TEXT | st.lists(_PART, max_size=3) | st.none()})


def _fields(chat: bool) -> dict[str, st.SearchStrategy[Any]]:
    """Every body field with a strategy of valid values (small token counts, so runs stay short)."""
    fields: dict[str, st.SearchStrategy[Any]] = {
        "model": st.just(MODEL),
        "max_tokens": st.integers(1, 6),
        "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "stream": st.booleans(),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
        "stop": _TEXT | st.lists(_TEXT, max_size=16),
        "n": st.just(1),
        "user": _TEXT,
        "category": st.sampled_from(CATEGORIES),
        "driftsched_target_tokens": st.integers(1, 6),
    }
    if chat:
        fields["messages"] = st.lists(_MESSAGE, min_size=1, max_size=4)
        fields["max_completion_tokens"] = st.integers(1, 6)
    else:
        fields["prompt"] = _TEXT | st.lists(_TEXT, min_size=1, max_size=2)
    return fields


@st.composite
def bodies(draw: st.DrawFn, chat: bool) -> dict[str, Any]:
    """A body whose fields are each absent, valid, or (in a mutated body) any JSON value; plus extras."""
    mutated = draw(st.integers(0, 2)) == 0  # a third of the bodies: junk values and extra fields
    required = "messages" if chat else "prompt"
    body: dict[str, Any] = {}
    for name, valid in _fields(chat).items():
        kinds = ["absent", "valid", "junk"] if mutated else ["absent", "valid"]
        kind = "valid" if name == required and not mutated else draw(st.sampled_from(kinds))
        if kind == "valid":
            body[name] = draw(valid)
        elif kind == "junk":
            body[name] = draw(_JSON)
    if mutated:
        body.update(draw(st.dictionaries(_TEXT, _JSON, max_size=3)))
    return body


@st.composite
def encoded(draw: st.DrawFn, body: dict[str, Any]) -> bytes:
    """`body` as bytes: proper JSON, or broken in one of the ways a client can break it."""
    how = draw(st.sampled_from(["json"] * 6 + ["ascii", "truncated", "bad_utf8", "nested", "binary", "empty",
                                              "not_object"]))
    text = json.dumps(body, ensure_ascii=False, allow_nan=True).encode("utf-8", "surrogatepass")
    if how == "ascii":
        return json.dumps(body).encode()
    if how == "truncated":
        return text[: draw(st.integers(0, len(text) - 1))]
    if how == "bad_utf8":
        at = draw(st.integers(0, len(text)))
        bad = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x00"]))
        return text[:at] + bad + text[at:]
    if how == "nested":
        depth = draw(st.sampled_from([64, 900, 1100, 5000, 100_000]))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        nest = opener * depth + b"1" + closer * depth
        if draw(st.booleans()):
            return nest
        name = draw(st.sampled_from([b"messages", b"prompt", b"stop", b"stream_options", b"extra"]))
        rest = b", " + text[1:] if len(text) > 2 else b"}"
        return b'{"' + name + b'": ' + nest + rest
    if how == "binary":
        return draw(st.binary(max_size=256))
    if how == "empty":
        return b""
    if how == "not_object":
        return json.dumps(draw(_JSON), allow_nan=True).encode()
    return text


_HEADER_TEXT = st.text(st.characters(min_codepoint=0x21, max_codepoint=0xFF, exclude_characters="\x7f"),
                       max_size=40)
_AUTH = st.one_of(
    st.sampled_from([GOLD, "Bearer sk-test-bronze", "Bearer sk-test-tiny", "bearer sk-test-gold",
                     "BEARER    sk-test-gold", "Bearer sk-test-gold extra", "Basic c2stdGVzdC1nb2xk",
                     "Bearer", "Bearer ", "sk-test-gold", "Token sk-test-gold", "Bearer sk-test-gol",
                     "Bearer " + "k" * 12_000]),
    _HEADER_TEXT.map(lambda s: "Bearer " + s),
    _HEADER_TEXT,
)
_CONTENT_TYPE = st.sampled_from(["application/json", "application/json; charset=latin-1", "text/plain",
                                 "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                                 "", "*/*", "application/json; charset=\u00e9"])


@st.composite
def header_sets(draw: st.DrawFn) -> dict[str, bytes]:
    headers: dict[str, bytes] = {}
    if draw(st.integers(0, 9)):  # 1 in 10 without any Authorization
        headers["authorization"] = draw(_AUTH).strip().encode("latin-1")  # h11 refuses edge blanks
    if draw(st.booleans()):
        headers["content-type"] = draw(_CONTENT_TYPE).encode("latin-1")
    extra = draw(st.dictionaries(st.from_regex(r"x-[a-z0-9-]{1,20}", fullmatch=True), _HEADER_TEXT,
                                 max_size=3))
    headers.update({k: v.encode("latin-1") for k, v in extra.items()})
    return headers


_KNOWN_PATHS = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics", "/",
                "/v1", "/v1/", "/v1/completions/", "//v1/completions", "/v1/../v1/models", "/docs",
                "/openapi.json", "/v1/chat/completions?stream=true", "/" + "a" * 6000]
_SEGMENT = st.text(max_size=12).map(lambda s: quote(s, safe=""))
_PATH = st.one_of(st.sampled_from(_KNOWN_PATHS),
                  st.lists(_SEGMENT, min_size=1, max_size=5).map(lambda segs: "/" + "/".join(segs)))
_METHOD = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"])


# -- checks --------------------------------------------------------------------------------------

def _assert_error_body(status: int, content: bytes) -> None:
    try:
        err = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        raise AssertionError(f"{status} without an OpenAI error body: {content[:200]!r}") from None
    assert set(err) == {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and isinstance(err["type"], str), err


def _assert_stream_ends(content: bytes) -> None:
    events = [line[6:] for line in content.decode().split("\n\n") if line.startswith("data: ")]
    assert events, content[:200]
    if events[-1] == "[DONE]":
        return
    _assert_error_body(200, events[-1].encode())  # a stream may end with an error event instead


def _send(client: httpx.Client, method: str, url: str | httpx.URL, content: bytes,
          headers: dict[str, bytes]) -> None:
    """Send one request, read the whole answer within MAX_REQUEST_S and check it (module docstring)."""
    started = time.monotonic()
    request = client.build_request(method, url, content=content or None, headers=headers)
    try:
        resp = client.send(request, stream=True)
        try:
            chunks = []
            for chunk in resp.iter_bytes():
                chunks.append(chunk)
                assert time.monotonic() - started < MAX_REQUEST_S, "the answer did not end"
        finally:
            resp.close()
    except httpx.TimeoutException as exc:
        raise AssertionError(f"{method} {url}: no answer within {TIMEOUT.read}s ({exc!r})") from None
    content, status = b"".join(chunks), resp.status_code
    SENT[status] += 1
    if status == 503 and resp.url.path == "/healthz":  # a probe's answer ("degraded"), not an API error
        assert json.loads(content)["status"] == "degraded", content
        return
    assert status < 500, (method, str(url)[:200], status, content[:300])
    if status >= 400 and method != "HEAD":
        _assert_error_body(status, content)
    elif status == 200 and resp.headers.get("content-type", "").startswith("text/event-stream"):
        _assert_stream_ends(content)


# -- the fuzz tests ------------------------------------------------------------------------------

@pytest.mark.parametrize("chat", [False, True])
@settings(FUZZ, max_examples=125)
@given(data=st.data())
def test_fuzzed_bodies_get_a_clean_answer(client, base_url, chat, data):
    body = data.draw(encoded(data.draw(bodies(chat))))
    path = "/chat/completions" if chat else "/completions"
    headers = {"authorization": GOLD.encode(), "content-type": b"application/json"}
    _send(client, "POST", base_url + path, body, headers)


@FUZZ
@given(chat=st.booleans(), headers=header_sets(), data=st.data())
def test_fuzzed_headers_get_a_clean_answer(client, base_url, chat, headers, data):
    body = json.dumps(data.draw(bodies(chat))).encode()
    _send(client, "POST", base_url + ("/chat/completions" if chat else "/completions"), body, headers)


@FUZZ
@given(method=_METHOD, path=_PATH, auth=st.booleans(), body=st.binary(max_size=64))
def test_fuzzed_paths_and_methods_get_a_clean_answer(client, base_url, method, path, auth, body):
    raw_path, _, query = path.partition("?")
    url = httpx.URL(base_url).copy_with(raw_path=(raw_path + ("?" + query if query else "")).encode())
    _send(client, method, url, body, {"authorization": GOLD.encode()} if auth else {})


@settings(FUZZ, max_examples=40)
@given(chat=st.booleans(), data=st.data(),
       lie=st.one_of(st.integers(-40, 40).filter(bool), st.sampled_from([10**9, 10**15])))
def test_a_lying_content_length_gets_an_answer_or_a_close(base_url, chat, data, lie):
    """Declared != sent; the client then half-closes. The server answers (not 5xx) or closes, never hangs."""
    body = json.dumps(data.draw(bodies(chat))).encode()
    declared = max(0, len(body) + lie)
    url = httpx.URL(base_url + ("/chat/completions" if chat else "/completions"))
    conn = http.client.HTTPConnection(url.host, url.port, timeout=TIMEOUT.read)
    try:
        conn.putrequest("POST", url.path)
        conn.putheader("Authorization", GOLD)
        conn.putheader("Content-Type", "application/json")
        conn.putheader("Content-Length", str(declared))
        conn.endheaders()
        conn.send(body)
        assert conn.sock is not None
        conn.sock.shutdown(socket.SHUT_WR)
        try:
            resp = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError):
            SENT[0] += 1  # closed without an answer: fine for a request that never completed
            return
        except TimeoutError:
            raise AssertionError(f"declared {declared}, sent {len(body)}: no answer, no close") from None
        content = resp.read()
    finally:
        conn.close()
    SENT[resp.status] += 1
    assert resp.status < 500, (resp.status, content[:300])
    if resp.status >= 400 and not (resp.status == 400 and content == SERVER_PARSER_400 and lie < 0):
        _assert_error_body(resp.status, content)


def test_unknown_paths_and_wrong_methods_get_openai_errors(client, base_url):
    missing = client.get(base_url + "/nope", headers={"Authorization": GOLD})
    assert (missing.status_code, missing.json()["error"]["code"]) == (404, "not_found")
    wrong = client.get(base_url + "/completions", headers={"Authorization": GOLD})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed")
    assert wrong.headers["allow"] == "POST"
    _assert_error_body(405, wrong.content)


def test_the_service_is_healthy_after_the_fuzzing(client, base_url, capsys):
    with capsys.disabled():
        print(f"\nfuzz: {SENT.total()} requests; statuses {dict(sorted(SENT.items()))} "
              "(0: closed unanswered)")
    assert httpx.get(base_url.removesuffix("/v1") + "/healthz", timeout=TIMEOUT).status_code == 200
    for chat in (False, True):
        resp = _complete(client, base_url, chat)
        assert resp.status_code == 200, resp.text
        assert resp.json()["usage"]["completion_tokens"] >= 1
