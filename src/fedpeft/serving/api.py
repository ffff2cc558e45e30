"""An OpenAI-compatible HTTP API over every adapter of a run: ``/v1/models``, ``/v1/completions`` and
``/v1/chat/completions`` (streaming as server-sent events), on FastAPI; :func:`serving` runs it on uvicorn in
a thread (tests, benchmarks), ``fedpeft serve`` in the foreground.

Each adapter is a model name (``global`` or ``client-N``, and ``base`` with adapters off); a request without
``model`` gets the run's default adapter. Generation goes through one :class:`~fedpeft.serving.batching.Batcher`,
which batches concurrent requests per adapter (``GET /stats`` shows the batches).

Notable choices:
- Sampling parameters and defaults are OpenAI's (temperature 1, top_p 1, n 1), with ``max_tokens``
  defaulting to 16 for completions and 128 for chat (capped to what the context leaves). Request bodies are
  validated with pydantic models that forbid unknown fields: an unknown or unsupported parameter, malformed
  JSON, a bad value, an unknown model (404 ``model_not_found``), a missing or wrong key (401) and a prompt
  over the model's context (400 ``context_length_exceeded``) all get OpenAI's error body
  ``{"error": {"message", "type", "param", "code"}}``, and the server serves on.
- Chat messages become one prompt. Instruction runs: each user turn goes through the run's template
  (``ServedRun.format_prompt``), system or developer text is put before the next user turn's text, and a
  past assistant turn follows its prompt, then a blank line. Other runs: a plain transcript, one
  ``role: content`` line per message, ending with ``assistant:``; ``\\nuser:`` is then a stop sequence, so
  the model does not write the user's next turn. A conversation ending with an assistant message is
  continued from that text.
- The key is compared in constant time by a small ASGI middleware, before the body is read, on every path
  but ``/health``.
- A streaming client that goes away cancels its generation at the next token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from fedpeft.serving.adapters import ServedRun, ServingError
from fedpeft.serving.batching import Batcher, Choice, Job, context_length, encode_prompt

COMPLETION_MAX_TOKENS = 16
CHAT_MAX_TOKENS = 128
TRANSCRIPT_STOP = "\nuser:"


class APIError(Exception):
    """An error answered with OpenAI's error body and ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, kind: str = ""):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind = kind or ("invalid_request_error" if status < 500 else "server_error")


def error_response(err: APIError) -> JSONResponse:
    body = {"error": {"message": err.message, "type": err.kind, "param": err.param, "code": err.code}}
    return JSONResponse(body, status_code=err.status)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    max_tokens: int | None = Field(None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("give at most 4 stop sequences, none empty")
        return stops

    @field_validator("presence_penalty", "frequency_penalty")
    @classmethod
    def _no_penalty(cls, value: float) -> float:
        if value != 0:
            raise ValueError("penalties are not supported by this server; leave them at 0")
        return value


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


def render_chat(run: ServedRun, messages: list[Message]) -> tuple[str, list[str]]:
    """The prompt for ``messages`` and the stop sequences it adds (see the module doc)."""
    if run.config.data.task != "instruction":
        lines = [f"{m.role}: {m.text}" for m in messages]
        if messages[-1].role != "assistant":
            lines.append("assistant:")
        return "\n".join(lines), [TRANSCRIPT_STOP]
    if not any(m.role == "user" for m in messages):
        raise APIError(400, "messages: an instruction run needs at least one user message", "messages")
    pieces, preface = [], []
    for m in messages:
        if m.role in ("system", "developer"):
            preface.append(m.text)
        elif m.role == "user":
            pieces.append(run.format_prompt("\n\n".join([*preface, m.text])))
            preface = []
        else:
            pieces.append(m.text + "\n\n")
    prompt = "".join(pieces)
    return (prompt[:-2] if messages[-1].role == "assistant" else prompt), []


def _validation_error(err: RequestValidationError) -> APIError:
    first = err.errors()[0]
    where = [str(x) for x in first.get("loc", ()) if x != "body"]
    param = ".".join(where) or None
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error", first.get("msg"))
        return APIError(400, f"malformed JSON body: {detail}", None, "invalid_json")
    if first.get("type") == "extra_forbidden":
        return APIError(400, f"unknown parameter {param!r}: this server does not take it", param, "unknown_parameter")
    if first.get("type") == "missing":
        return APIError(400, f"missing required parameter {param!r}", param, "missing_required_parameter")
    return APIError(400, f"{param or 'body'}: {first.get('msg')} (got {first.get('input')!r})", param, "invalid_value")


class _KeyCheck:
    """ASGI middleware: 401 unless ``Authorization: Bearer <key>`` (every path but /health)."""

    def __init__(self, app: Any, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] != "/health":
            given = dict(scope["headers"]).get(b"authorization")
            if given is None or not hmac.compare_digest(given, self.expected):
                why = "no API key given (send Authorization: Bearer KEY)" if given is None else "incorrect API key"
                await error_response(APIError(401, why, None, "invalid_api_key"))(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _choice(index: int, finish_reason: str | None = None, **fields: Any) -> dict[str, Any]:
    """One entry of a response's or chunk's ``choices``."""
    return {"index": index, **fields, "logprobs": None, "finish_reason": finish_reason}


def _usage_asked(body: _Sampling) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def make_app(run: ServedRun, api_key: str | None, max_rows: int = 32, window_s: float = 0.005) -> FastAPI:
    """The API over ``run`` (a key makes every request need it); its batcher is ``app.state.batcher``,
    started and stopped with the app."""
    batcher = Batcher(run, max_rows=max_rows, window_s=window_s)
    limit = context_length(run.model, run.tokenizer)
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            await asyncio.to_thread(batcher.close)

    app = FastAPI(title="fedpeft serve", lifespan=lifespan)
    app.state.batcher = batcher
    if api_key:
        app.add_middleware(_KeyCheck, key=api_key)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        return error_response(_validation_error(err))

    @app.exception_handler(HTTPException)
    async def _http(_: Request, err: HTTPException) -> JSONResponse:
        return error_response(APIError(err.status_code, str(err.detail), None, None))

    @app.exception_handler(Exception)
    async def _bug(_: Request, err: Exception) -> JSONResponse:
        return error_response(APIError(500, f"internal error: {type(err).__name__}: {err}"))

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "fedpeft", "root": run.config.model.name}

    def served(name: str | None) -> str:
        name = name or run.default
        if name not in run.names:
            message = f"The model {name!r} does not exist; this run serves: {', '.join(run.names)}"
            raise APIError(404, message, "model", "model_not_found")
        return name

    def job_for(body: _Sampling, prompts: list[str], max_tokens: int | None, default: int, stops: list[str]) -> Job:
        name = served(body.model)
        ids = [encode_prompt(run.tokenizer, p) for p in prompts]
        param = "prompt" if isinstance(body, CompletionRequest) else "messages"
        longest = max(len(i) for i in ids)
        if limit is not None and longest >= limit:
            message = f"the prompt is {longest} tokens; this model's context is {limit} tokens (prompt and completion)"
            raise APIError(400, message, param, "context_length_exceeded")
        if limit is not None and max_tokens is not None and longest + max_tokens > limit:
            message = (
                f"max_tokens={max_tokens} with a {longest}-token prompt exceeds this model's context of {limit} "
                f"tokens; ask for at most {limit - longest}"
            )
            raise APIError(400, message, "max_tokens", "context_length_exceeded")
        if max_tokens is None:
            max_tokens = default if limit is None else min(default, limit - longest)
        stop = tuple(dict.fromkeys([*(body.stop or []), *stops]))
        return Job(name, ids, body.n, max_tokens, body.temperature, body.top_p, stop, body.seed)

    def usage(job: Job, choices: list[Choice]) -> dict[str, int]:
        prompt, completion = sum(len(p) for p in job.prompts), sum(c.tokens for c in choices)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    async def answer(job: Job) -> list[Choice]:
        try:
            return await asyncio.wrap_future(batcher.submit(job))
        except ServingError as err:
            raise APIError(503, str(err)) from err
        except asyncio.CancelledError:
            job.cancel()
            raise

    def stream(job: Job, head: dict[str, Any], piece: Any, end: Any, opening: Any, include_usage: bool) -> Any:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()

        def on_text(choice: int, text: str) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, (choice, text))
            except RuntimeError:  # the event loop has closed: nobody is listening
                job.cancel()

        job.on_text = on_text
        try:
            future = batcher.submit(job)
        except ServingError as err:
            raise APIError(503, str(err)) from err
        future.add_done_callback(lambda _: loop.call_soon_threadsafe(events.put_nowait, None))
        count = len(job.prompts) * job.n

        async def chunks() -> AsyncIterator[str]:
            try:
                for i in range(count):
                    if opening is not None:
                        yield _sse({**head, "choices": [opening(i)]})
                while (event := await events.get()) is not None:
                    yield _sse({**head, "choices": [piece(*event)]})
                if future.cancelled():
                    return
                if (err := future.exception()) is not None:
                    message = f"generation failed: {type(err).__name__}: {err}"
                    yield _sse({"error": {"message": message, "type": "server_error", "param": None, "code": None}})
                    return
                choices = future.result()
                for i, c in enumerate(choices):
                    yield _sse({**head, "choices": [end(i, c.finish_reason)]})
                if include_usage:
                    yield _sse({**head, "choices": [], "usage": usage(job, choices)})
                yield _sse("[DONE]")
            finally:
                if not future.done():
                    job.cancel()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card(n) for n in run.names]}

    @app.get("/v1/models/{name}")
    async def model(name: str) -> dict[str, Any]:
        return model_card(served(name))

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        return batcher.stats()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise APIError(400, "prompt: give a string or a non-empty list of strings", "prompt", "invalid_value")
        job = job_for(body, prompts, body.max_tokens, COMPLETION_MAX_TOKENS, [])
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time())}
        head["model"] = job.model
        if body.stream:
            piece = lambda i, text: _choice(i, text=text)  # noqa: E731
            return stream(job, head, piece, lambda i, why: _choice(i, why, text=""), None, _usage_asked(body))
        choices = await answer(job)
        rows = [_choice(i, c.finish_reason, text=c.text) for i, c in enumerate(choices)]
        return {**head, "choices": rows, "usage": usage(job, choices)}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> Any:
        prompt, stops = render_chat(run, body.messages)
        job = job_for(body, [prompt], body.max_completion_tokens or body.max_tokens, CHAT_MAX_TOKENS, stops)
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time())}
        head["model"] = job.model
        if body.stream:
            head["object"] = "chat.completion.chunk"
            piece = lambda i, text: _choice(i, delta={"content": text})  # noqa: E731
            opening = lambda i: _choice(i, delta={"role": "assistant", "content": ""})  # noqa: E731
            end = lambda i, why: _choice(i, why, delta={})  # noqa: E731
            return stream(job, head, piece, end, opening, _usage_asked(body))
        choices = await answer(job)
        rows = [
            _choice(i, c.finish_reason, message={"role": "assistant", "content": c.text}) for i, c in enumerate(choices)
        ]
        return {**head, "choices": rows, "usage": usage(job, choices)}

    return app


def bind_socket(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: a free port), or a clear error where the port is taken."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise ServingError(f"--host {host}: cannot resolve it ({err})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ServingError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port") from None
    return sock


@contextmanager
def serving(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout: float = 60.0) -> Iterator[str]:
    """``app`` on uvicorn in a thread for the block, at the base URL it yields (``http://host:port``)."""
    import uvicorn

    sock = bind_socket(host, port)
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="fedpeft-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise ServingError(f"the server on {host}:{port} did not start within {timeout} s")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
