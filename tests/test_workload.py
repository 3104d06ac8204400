"""Tuning on the user's prompts: the JSONL format and its errors, tokenizing as the server does,
trials that measure those prompts, and winners that record (and are keyed by) their workload."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from autotune.backends.base import Workload
from autotune.backends.llama_cpp.backend import LlamaCppBackend
from autotune.backends.llama_cpp.commands import bench_argv
from autotune.cli import app
from autotune.errors import AutotuneError
from autotune.workloads.prompt_file import BUILT_IN, builtin_prompts, read_prompt_file
from autotune.workloads.tokens import prompt_workload, tokenize

pytest.importorskip("llama_cpp")
ROOT = Path(__file__).resolve().parents[1]
CHAT = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]}
PROMPTS = [{"prompt": "def add(a, b):\n    return a + b\n"}, CHAT, {"prompt": "The harbour town had been built"}]


def _jsonl(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_a_file_holds_prompts_chats_blank_lines_and_a_trace(tmp_path: Path):
    _jsonl(tmp_path / "routing.trace", ["not read yet"])
    prompts = read_prompt_file(_jsonl(tmp_path / "p.jsonl", [PROMPTS[0], "", {"trace": "routing.trace"}, CHAT]))
    assert prompts.entries == (PROMPTS[0], CHAT) and prompts.lines == (1, 4)
    assert prompts.trace == str((tmp_path / "routing.trace").resolve())
    assert prompts.name == "p.jsonl" and len(prompts.digest) == 16
    other = read_prompt_file(_jsonl(tmp_path / "q.jsonl", [PROMPTS[0]]))
    assert other.digest != prompts.digest and other.trace is None


def test_the_built_in_set_mixes_chat_code_and_prose_of_different_lengths():
    prompts = builtin_prompts()
    assert prompts.name == BUILT_IN and 8 <= len(prompts.entries) <= 12
    chats = [e for e in prompts.entries if "messages" in e]
    texts = [e["prompt"] for e in prompts.entries if "prompt" in e]
    assert chats and any("def " in t or "class " in t for t in texts)
    sizes = [len(json.dumps(e)) for e in prompts.entries]
    assert max(sizes) > 5 * min(sizes)


@pytest.mark.parametrize("lines, message", [
    (None, "no such file"),
    (["{not json"], "line 1: not JSON"),
    ([], "holds no prompts"),
    (["", "  "], "holds no prompts"),
    ([{"prompt": "a"}, {"text": "b"}], 'line 2: a line needs "prompt" (text) or "messages"'),
    ([["a list"]], "line 1: expected a JSON object"),
    ([{"prompt": ""}], '"prompt" must be a non-empty string'),
    ([{"messages": [{"role": "user"}]}], '"messages" must be a non-empty list'),
    ([{"prompt": "a"}, {"trace": "missing.trace"}], "routing trace"),
])
def test_bad_workload_files_are_one_line_errors_at_the_cli(tiny_model: Path, tmp_path: Path, lines, message: str):
    path = tmp_path / "w.jsonl"
    if lines is not None:
        _jsonl(path, lines)
    done = CliRunner().invoke(app, ["run", str(tiny_model), "--vram-cap", "4G", "--workload", str(path),
                                    "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}"])
    assert done.exit_code == 2, done.output
    assert message in done.output and len(done.output.strip().splitlines()) <= 2  # one line, however wrapped
    assert not (tmp_path / "db.sqlite").exists()  # refused before any study is registered


def test_a_prompt_longer_than_the_context_is_a_one_line_error(tiny_model: Path, tmp_path: Path):
    path = _jsonl(tmp_path / "long.jsonl", [PROMPTS[0], {"prompt": "word " * 200}])
    done = CliRunner().invoke(app, ["run", str(tiny_model), "--vram-cap", "4G", "--workload", str(path),
                                    "--ctx", "128", "--gen-tokens", "8", "--storage", f"sqlite:///{tmp_path / 'db'}"])
    assert done.exit_code == 2, done.output
    assert "long.jsonl line 2: the prompt is" in done.output and "more than --ctx 128" in done.output


def test_prompts_are_tokenized_as_the_server_tokenizes_them(tiny_model: Path, tmp_path: Path):
    from autotune.cache_runtime.tokenizer import Tokenizer
    from autotune.serve.chat import model_chat_template, prompt_ids

    tokenizer = Tokenizer(tiny_model)
    tokens = tokenize(tiny_model, read_prompt_file(_jsonl(tmp_path / "p.jsonl", PROMPTS)))
    chat = model_chat_template(tiny_model, tokenizer.text).render(CHAT["messages"])
    assert chat.startswith("<|im_start|>system\nBe brief.<|im_end|>")  # the tiny model's template: ChatML
    assert tokens == [prompt_ids(tokenizer, PROMPTS[0]["prompt"]), prompt_ids(tokenizer, chat),
                      prompt_ids(tokenizer, PROMPTS[2]["prompt"])]
    assert tokenizer.encode("<|im_start|>")[0] in tokens[1]  # control tokens parsed as such


def test_a_model_whose_vocabulary_llama_cpp_cannot_read_is_a_one_line_error(dense_model: Path, tmp_path: Path):
    with pytest.raises(AutotuneError, match=r"cannot tokenize the prompts of p.jsonl with dense.gguf: .*--prompt-tokens") \
            as raised:
        tokenize(dense_model, read_prompt_file(_jsonl(tmp_path / "p.jsonl", PROMPTS)))
    assert "\n" not in str(raised.value)


def test_a_workload_cycles_its_prompts_and_is_keyed_by_them(tiny_model: Path, tmp_path: Path):
    prompts = read_prompt_file(_jsonl(tmp_path / "p.jsonl", PROMPTS))
    workload = prompt_workload(tiny_model, prompts, Workload(n_gen=8, repetitions=4, n_ctx=512))
    lengths = [len(p) for p in workload.prompts]
    assert [len(p) for p in workload.measured_prompts()] == lengths + lengths[:1]
    assert workload.n_prompt == round(sum(lengths + lengths[:1]) / 4)
    assert workload.tokens_needed == max(lengths) + 8
    assert Workload.from_json(json.loads(json.dumps(asdict(workload)))) == workload  # as a study's settings keep it
    builtin = prompt_workload(tiny_model, builtin_prompts(), Workload(n_gen=8, repetitions=4, n_ctx=4096))
    random_tokens = Workload(n_prompt=workload.n_prompt, n_gen=8, repetitions=4, n_ctx=512)
    assert random_tokens.key() == f"decode:p{workload.n_prompt}:n8:c512"  # as stored before prompts existed
    assert workload.key() == random_tokens.key() + f":w{prompts.digest}"
    assert builtin.key().endswith(f":w{builtin_prompts().digest}") and builtin.key() != workload.key()
    assert Workload.from_json(asdict(random_tokens)) == random_tokens


def test_llama_cpp_trials_measure_the_prompts_and_llama_bench_their_mean_length(tiny_model: Path, tmp_path: Path):
    prompts = read_prompt_file(_jsonl(tmp_path / "p.jsonl", PROMPTS))
    workload = prompt_workload(tiny_model, prompts, Workload(n_gen=4, repetitions=4, n_ctx=256))
    config = {"n_threads": 1, "n_threads_batch": 1}
    [result] = LlamaCppBackend().run_trials([config], tiny_model, workload, deadline_s=120)
    assert result.ok, result.message
    assert result.extra["request_prompt_tokens"] == [len(p) for p in workload.measured_prompts()]
    assert len(result.prefill_tps.samples) == len(result.decode_tps.samples) == 4
    argv = bench_argv(config, tiny_model, workload)
    assert argv[argv.index("-p") + 1] == str(workload.n_prompt) and argv[argv.index("-n") + 1] == "4"


@pytest.mark.slow
def test_cache_trials_measure_requests_of_the_prompts(tiny_model: Path, tmp_path: Path):
    from autotune.backends.cache.backend import CacheBackend

    prompts = read_prompt_file(_jsonl(tmp_path / "p.jsonl", PROMPTS))
    workload = prompt_workload(tiny_model, prompts, Workload(n_gen=4, repetitions=2, n_ctx=256))
    [result] = CacheBackend().run_trials([{"vram_cap": 4 * 2**30}], tiny_model, workload, deadline_s=300)
    assert result.ok, result.message
    assert result.extra["request_prompt_tokens"] == [len(p) for p in workload.prompts[:2]]
    assert len(result.prefill_tps.samples) == len(result.decode_tps.samples) == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "autotune.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_a_study_tunes_on_the_users_prompts_and_its_winner_records_them(tiny_model: Path, tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    trace = _jsonl(tmp_path / "recorded.trace", ["a routing trace"])
    path = _jsonl(tmp_path / "prompts.jsonl", PROMPTS)
    common = ["run", str(tiny_model), "--vram-cap", "4G", "--backends", "llama_cpp", "--trials", "2", "--storage",
              url, "--gen-tokens", "4", "--repetitions", "2", "--ctx", "256", "--no-verify", "--seed", "0"]
    done = _cli(*common, "--workload", str(path), "--workload-trace", str(trace), "--study", "mine")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "workload: prompts.jsonl (sha256" in " ".join(done.stdout.split())
    answer = json.loads(_cli("best", str(tiny_model), "--storage", url, "--json").stdout)
    [mine] = answer
    digest = read_prompt_file(path).digest
    assert mine["workload"].endswith(f":w{digest}")
    assert mine["tuned_on"] == {"prompts": "prompts.jsonl", "sha256": digest, "count": 3, "trace": str(trace.resolve()),
                                "prompt_tokens": int(mine["workload"].split(":")[1][1:]), "gen_tokens": 4}

    # the built-in set is another workload: its winner is stored beside, not in place of, this one
    assert _cli(*common, "--ctx", "2048", "--study", "builtin").returncode == 0
    rows = {row["tuned_on"]["prompts"]: row for row in json.loads(_cli("best", str(tiny_model), "--storage", url,
                                                                            "--json").stdout)}
    assert set(rows) == {"prompts.jsonl", BUILT_IN} and rows[BUILT_IN]["study"] == "builtin"
    exported = _cli("export", str(tiny_model), "--vram-cap", "4G", "--storage", url, "--workload", str(path))
    assert exported.returncode == 0, exported.stderr
    assert "winner of study mine" in exported.stderr and "tuned on: prompts.jsonl" in exported.stderr
    unknown = _cli("export", str(tiny_model), "--vram-cap", "4G", "--storage", url, "--workload",
                   str(_jsonl(tmp_path / "other.jsonl", PROMPTS[:1])))
    assert unknown.returncode == 2 and "no stored decode winner tuned on those prompts" in unknown.stderr


def test_random_prompts_and_a_prompt_file_do_not_mix(tiny_model: Path, tmp_path: Path):
    path = _jsonl(tmp_path / "p.jsonl", PROMPTS)
    for args in (["--workload", str(path), "--prompt-tokens", "16"], ["--workload-trace", str(path)]):
        done = CliRunner().invoke(app, ["run", str(tiny_model), "--vram-cap", "4G", *args])
        assert done.exit_code == 2 and "--workload" in done.output, done.output
