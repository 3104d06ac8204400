"""The OpenAI-compatible HTTP API over a ``Session``.

``POST /v1/completions`` and ``POST /v1/chat/completions`` (``max_tokens``, ``temperature``,
``stop``, ``stream`` as server-sent events; ``ignore_eos`` and ``return_token_ids`` as vLLM
offers them), ``GET /v1/models``, ``GET /health``, and the expert cache's statistics at
``GET /v1/stats``. Errors are OpenAI's JSON shape: 400 for a bad request (unknown values,
a prompt the context cannot hold, messages the chat template refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from typing import Any, AsyncIterator, Literal, Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.exceptions import HTTPException

from autotune.serve.chat import ChatError
from autotune.serve.session import BadRequest, Chunk, Sampling, Session

MAX_STOP = 4


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields this server does not use

    model: Optional[str] = None
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    ignore_eos: bool = False
    return_token_ids: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: Union[str, list[str], None]) -> list[str]:
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP or not all(stops):
            raise ValueError(f"stop takes at most {MAX_STOP} non-empty strings")
        return stops

    def sampling(self, max_tokens: int, extra_stop: tuple[str, ...] = ()) -> Sampling:
        return Sampling(max_tokens, self.temperature, tuple(self.stop or []) + extra_stop, self.ignore_eos)


class CompletionRequest(_Request):
    prompt: Union[str, list[int], list[str]]
    max_tokens: int = Field(16, ge=1)


class _TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, tool_calls, ...: the template may use them

    role: str = Field(min_length=1)
    content: Union[str, list[_TextPart], None] = None

    def for_template(self) -> dict[str, Any]:
        data = self.model_dump(exclude_none=True)
        if isinstance(self.content, list):
            data["content"] = "".join(part.text for part in self.content)
        data.setdefault("content", "")
        return data


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status)


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)}\n\n"


async def _collect(chunks: AsyncIterator[Chunk]) -> Chunk:
    whole = Chunk("")
    async for chunk in chunks:
        whole.text += chunk.text
        whole.token_ids += chunk.token_ids
        whole.finish_reason = chunk.finish_reason
    return whole


def _worth_sending(chunk: Chunk, request: _Request) -> bool:
    """A stream event per chunk with text, the last one, or any with tokens the client asked for
    (a token whose text is held back, or has none, makes an empty chunk)."""
    return bool(chunk.text or chunk.finish_reason or (request.return_token_ids and chunk.token_ids))


def _usage(prompt: list[int], completion: list[int]) -> dict[str, int]:
    return {"prompt_tokens": len(prompt), "completion_tokens": len(completion),
            "total_tokens": len(prompt) + len(completion)}


def create_app(session: Session) -> FastAPI:
    """The routes over ``session`` (whose engine the caller loads and closes). While the app
    runs, the session saves its routing counts as it goes, and once more at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        saving = asyncio.create_task(session.autosave())
        try:
            yield
        finally:
            saving.cancel()
            await session.call(session.save_routing)

    app = FastAPI(title="autotune serve", version="1", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            return _error(400, f"the request body is not valid JSON ({first.get('ctx', {}).get('error', first['msg'])})")
        where = ".".join(str(part) for part in first["loc"] if part != "body")
        return _error(400, f"{where}: {first['msg']}" if where else first["msg"], where or None)

    @app.exception_handler(BadRequest)
    async def _bad(_: Request, exc: BadRequest) -> JSONResponse:
        return _error(400, str(exc), exc.param, exc.code)

    @app.exception_handler(ChatError)
    async def _chat(_: Request, exc: ChatError) -> JSONResponse:
        return _error(400, str(exc), "messages")

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(_: Request, exc: Exception) -> JSONResponse:
        return _error(500, f"{type(exc).__name__}: {exc}")

    def envelope(kind: str) -> dict[str, Any]:
        prefix = "chatcmpl" if kind.startswith("chat") else "cmpl"
        return {"id": f"{prefix}-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()),
                "model": session.model_id}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": session.model_id, "object": "model", "created": 0,
                                            "owned_by": "autotune"}]}

    @app.get("/v1/stats")
    async def stats() -> dict[str, Any]:
        counters = session.counters
        return {"model": session.model_id, "config": session.config, "requests": counters.requests,
                "prompt_tokens": counters.prompt_tokens, "completion_tokens": counters.completion_tokens,
                "cache": await session.call(session.stats)}

    async def prompt_of(request: CompletionRequest) -> list[int]:
        prompt = request.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise BadRequest("one prompt per request", "prompt")
            prompt = prompt[0]
        return await session.call(session.encode, prompt) if isinstance(prompt, str) else list(prompt)

    @app.post("/v1/completions")
    async def completions(request: CompletionRequest):
        prompt = await prompt_of(request)
        sampling = request.sampling(session.check_prompt(prompt, request.max_tokens))
        head = envelope("text_completion")

        def choice(chunk: Chunk) -> dict[str, Any]:
            out = {"index": 0, "text": chunk.text, "logprobs": None, "finish_reason": chunk.finish_reason}
            if request.return_token_ids:
                out["token_ids"] = chunk.token_ids
            return out

        if not request.stream:
            whole = await _collect(session.generate(prompt, sampling))
            return {**head, "choices": [choice(whole)], "usage": _usage(prompt, whole.token_ids)}

        async def events() -> AsyncIterator[str]:
            async for chunk in session.generate(prompt, sampling):
                if _worth_sending(chunk, request):
                    yield _sse({**head, "choices": [choice(chunk)]})
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatRequest):
        text = session.chat.render([message.for_template() for message in request.messages])
        prompt = await session.call(session.encode, text)
        max_tokens = request.max_completion_tokens or request.max_tokens
        sampling = request.sampling(session.check_prompt(prompt, max_tokens), session.chat.stop)
        if not request.stream:
            whole = await _collect(session.generate(prompt, sampling))
            message = {"role": "assistant", "content": whole.text}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": whole.finish_reason}
            if request.return_token_ids:
                choice["token_ids"] = whole.token_ids
            return {**envelope("chat.completion"), "choices": [choice], "usage": _usage(prompt, whole.token_ids)}

        head = envelope("chat.completion.chunk")

        def event(delta: dict[str, Any], chunk: Chunk | None = None) -> str:
            choice = {"index": 0, "delta": delta, "logprobs": None,
                      "finish_reason": chunk.finish_reason if chunk else None}
            if request.return_token_ids and chunk is not None:
                choice["token_ids"] = chunk.token_ids
            return _sse({**head, "choices": [choice]})

        async def events() -> AsyncIterator[str]:
            yield event({"role": "assistant", "content": ""})
            async for chunk in session.generate(prompt, sampling):
                if _worth_sending(chunk, request):
                    yield event({"content": chunk.text} if chunk.text else {}, chunk)
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
