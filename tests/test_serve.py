"""``autotune serve``'s HTTP API on CPU (tiny preset): the same tokens as ``Engine.generate``,
chat through the GGUF's template, server-sent events, stop strings, one sequence at a time,
and OpenAI-style JSON errors."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("llama_cpp")  # the GGUF's tokenizer

with warnings.catch_warnings():  # newer Starlette prefers httpx's successor; httpx works everywhere
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

import httpx
import torch

from autotune.backends.cache.knobs import cache_config, normalize
from autotune.cache_runtime.budget import model_sizes, plan_with_slots
from autotune.cache_runtime.engine import Engine
from autotune.serve.app import create_app
from autotune.serve.chat import ChatError, ChatTemplate
from autotune.serve.session import Session
from autotune.serve.text import TextStream

PROMPT = [5, 17, 300, 42, 7, 999]
N = 12
CTX = 128


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def session(tiny_model: Path) -> Session:
    """Half the experts in slots (CPU: float32 KV cache); no learned counts read or written."""
    base = normalize({"vram_cap": 1, "max_ctx": CTX, "learned_placement": False, "prefetch_depth": 1})
    cap = plan_with_slots(model_sizes(tiny_model), cache_config(base), 32, kv_element_bytes=4).peak
    config = {**base, "vram_cap": cap}
    def load() -> Engine:
        engine = Engine(tiny_model, device="cpu", kernels="torch", cache_config=cache_config(config))
        engine.persist_routing = False
        engine.loaded_on = threading.get_ident()
        return engine

    served = Session.load(load, "tiny", config)
    yield served
    served.close()


@pytest.fixture(scope="module")
def client(session: Session) -> TestClient:
    return TestClient(create_app(session))


@pytest.fixture(scope="module")
def greedy(tiny_model: Path) -> list[int]:
    """Full residency's greedy tokens: the cache must not change them."""
    return Engine(tiny_model, device="cpu", kernels="torch", max_ctx=CTX).generate(PROMPT, N)


def test_the_engine_runs_on_the_thread_that_loaded_it(session: Session):
    """One thread's OpenMP teams, not two competing for the cores (session.py's docstring)."""
    assert asyncio.run(session.call(threading.get_ident)) == session.engine.loaded_on != threading.get_ident()


def _complete(client: TestClient, **body) -> dict:
    response = client.post("/v1/completions", json={"temperature": 0, "ignore_eos": True, **body})
    assert response.status_code == 200, response.text
    return response.json()


def _events(client: TestClient, path: str, body: dict) -> list:
    with client.stream("POST", path, json={"temperature": 0, "ignore_eos": True, "stream": True, **body}) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line[len("data: "):]) for line in lines[:-1]]


def test_completion_gives_engine_generates_greedy_tokens(client, session, greedy):
    answer = _complete(client, prompt=PROMPT, max_tokens=N, return_token_ids=True)
    [choice] = answer["choices"]
    assert choice["token_ids"] == greedy == session.engine.generate(PROMPT, N)
    assert choice["text"] == session.tokenizer.decode(greedy) and choice["finish_reason"] == "length"
    assert answer["object"] == "text_completion" and answer["model"] == "tiny"
    assert answer["usage"] == {"prompt_tokens": len(PROMPT), "completion_tokens": N, "total_tokens": len(PROMPT) + N}
    by_text = _complete(client, prompt=session.tokenizer.decode(PROMPT), max_tokens=4, return_token_ids=True)
    expected = session.engine.generate(session.encode(session.tokenizer.decode(PROMPT)), 4)
    assert by_text["choices"][0]["token_ids"] == expected


def test_streamed_completion_is_the_same_text_in_pieces(client, greedy):
    whole = _complete(client, prompt=PROMPT, max_tokens=N)["choices"][0]["text"]
    events = _events(client, "/v1/completions", {"prompt": PROMPT, "max_tokens": N, "return_token_ids": True})
    assert "".join(e["choices"][0]["text"] for e in events) == whole
    assert [t for e in events for t in e["choices"][0]["token_ids"]] == greedy
    assert [e["choices"][0]["finish_reason"] for e in events] == [None] * (len(events) - 1) + ["length"]
    assert len({e["id"] for e in events}) == 1


def test_a_stop_string_ends_the_text_before_it_streamed_or_not(client, session, greedy):
    text = session.tokenizer.decode(greedy)
    stop = text[len(text) // 2: len(text) // 2 + 3]
    answer = _complete(client, prompt=PROMPT, max_tokens=N, stop=stop)["choices"][0]
    assert (answer["text"], answer["finish_reason"]) == (text[: text.index(stop)], "stop")
    events = _events(client, "/v1/completions", {"prompt": PROMPT, "max_tokens": N, "stop": [stop, "never"]})
    assert "".join(e["choices"][0]["text"] for e in events) == answer["text"]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"


def test_an_end_of_generation_token_stops_unless_ignored(client, session, greedy, monkeypatch):
    monkeypatch.setattr(session.tokenizer, "is_end", lambda token: token == greedy[3])
    body = {"prompt": PROMPT, "max_tokens": N, "return_token_ids": True, "ignore_eos": False}
    choice = _complete(client, **body)["choices"][0]
    assert (choice["token_ids"], choice["finish_reason"]) == (greedy[:3], "stop")
    assert _complete(client, **{**body, "ignore_eos": True})["choices"][0]["token_ids"] == greedy


def test_chat_renders_the_gguf_template_and_streams(client, session):
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hello"}, {"type": "text", "text": " there"}]}]
    response = client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 6, "temperature": 0,
                                                         "ignore_eos": True, "return_token_ids": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    prompt = session.encode("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
                            "<|im_start|>assistant\n")
    expected = session.engine.generate(prompt, 6)
    [choice] = answer["choices"]
    assert choice["token_ids"] == expected and choice["message"] == {"role": "assistant",
                                                                     "content": session.tokenizer.decode(expected)}
    assert answer["object"] == "chat.completion" and answer["usage"]["prompt_tokens"] == len(prompt)
    events = _events(client, "/v1/chat/completions", {"messages": messages, "max_tokens": 6})
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events) == choice["message"]["content"]
    assert events[-1]["choices"][0]["finish_reason"] == "length" and events[-1]["object"] == "chat.completion.chunk"


def test_without_max_tokens_chat_may_fill_the_context(session):
    assert session.check_prompt(PROMPT, None) == CTX - len(PROMPT)
    assert session.check_prompt(PROMPT, 5) == 5


def test_requests_at_once_run_one_after_the_other(session, greedy):
    async def both() -> list[dict]:
        transport = httpx.ASGITransport(app=create_app(session))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            body = {"prompt": PROMPT, "max_tokens": N, "temperature": 0, "ignore_eos": True, "return_token_ids": True}
            answers = await asyncio.gather(*(http.post("/v1/completions", json={**body, "stream": stream})
                                             for stream in (True, False, True)))
        return answers

    answers = asyncio.run(both())
    assert all(answer.status_code == 200 for answer in answers)
    streamed = [json.loads(line[6:]) for line in answers[0].text.splitlines() if line.startswith("data: {")]
    assert [t for e in streamed for t in e["choices"][0]["token_ids"]] == greedy
    assert answers[1].json()["choices"][0]["token_ids"] == greedy


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/v1/completions", {"prompt": list(range(CTX))}, "prompt"),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": CTX}, "max_tokens"),
        ("/v1/completions", {"prompt": PROMPT, "temperature": 3}, "temperature"),
        ("/v1/completions", {"prompt": PROMPT, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ("/v1/completions", {"prompt": PROMPT, "n": 2}, "n"),
        ("/v1/completions", {"prompt": [10**6]}, "prompt"),
        ("/v1/completions", {"prompt": ""}, "prompt"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"max_tokens": 4}, "prompt"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages.0.content"),
    ],
)
def test_bad_requests_are_400_with_an_openai_error(client, path, body, param):
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param or error["param"].startswith(param)


def test_other_errors_are_json_too(client, session, monkeypatch):
    response = client.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    assert client.get("/v1/nothing").status_code == 404 and "error" in client.get("/v1/nothing").json()
    monkeypatch.setattr(session, "chat", ChatTemplate("{{ raise_exception('roles must alternate') }}"))
    refused = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]})
    assert refused.status_code == 400 and "roles must alternate" in refused.json()["error"]["message"]


def test_models_health_and_cache_statistics(client, session):
    assert client.get("/health").json() == {"status": "ok"}
    [model] = client.get("/v1/models").json()["data"]
    assert model["id"] == "tiny" and model["object"] == "model"
    _complete(client, prompt=PROMPT, max_tokens=2)
    stats = client.get("/v1/stats").json()
    assert stats["config"] == session.config and stats["requests"] >= 1 and stats["completion_tokens"] >= 2
    assert sum(stats["cache"]["slots_per_layer"]) == 32 and 0 <= stats["cache"]["hit_rate"] <= 1
    assert stats["cache"]["prefetch_precision"] is not None


def test_text_is_held_back_while_a_character_or_a_stop_string_may_still_form():
    pieces = {1: "é".encode()[:1], 2: "é".encode()[1:] + b"ab", 3: b"cd", 4: b"x"}
    stream = TextStream(pieces.__getitem__, stop=("bcx", "zz"))
    assert [stream.add(1), stream.add(2), stream.add(3)] == ["", "éa", "bcd"]
    assert (stream.add(4), stream.rest()) == ("x", "")
    stopped = TextStream(pieces.__getitem__, stop=("bcd",))
    assert [stopped.add(2), stopped.add(3), stopped.stopped, stopped.rest()] == ["\ufffda", "", True, ""]


def test_chatml_stands_in_for_a_missing_template_and_template_errors_are_chat_errors():
    chatml = ChatTemplate(None)
    assert chatml.render([{"role": "user", "content": "hi"}]) == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert chatml.stop == ("<|im_end|>",)
    template = ChatTemplate("{{ bos_token }}{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}", bos_token="<s>")
    assert template.render([{"role": "user", "content": "ü"}]) == '<s>"ü"' and template.stop == ()
    with pytest.raises(ChatError, match="cannot render"):
        ChatTemplate("{{ messages[5]['content'] }}").render([])
