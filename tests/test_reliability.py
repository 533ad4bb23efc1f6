"""Issue 13's breaks, each reproduced as its filer met it: the build's folder, special-token text, damaged
shards, one bad record, a killed build, error paths, accounting."""

from __future__ import annotations

import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftdata.builder import BuildError, build
from sftdata.cli import main
from sftdata.config import BuildConfig, Overlong, SpecialText
from sftdata.manifest import Manifest, ManifestError
from sftdata.out_dir import MARKER, OutDirError
from sftdata.shards import iter_rows, open_build, read_rejects
from sftdata.units import UNITS
from sftdata.worker import Worker

from .conftest import FIXTURES, REPO, fixture_tokenizer

DATA = FIXTURES / "data"
CHATML = fixture_tokenizer("chatml-bpe")  # Qwen-like: <think>, <tool_call>... are added, not special
CALL_ID_OF = {"<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>", "<|im_start|>"}


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _chat(user: str = "hi", reply: str = "hello", **extra) -> dict:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}], **extra}


def _many(path: Path, n: int) -> Path:
    return _write_jsonl(path, [_chat(f"question {i} " * 8, f"answer {i} " * 8) for i in range(n)])


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "sftdata", *args], capture_output=True, text=True, env=env,
                          **kwargs)


# -- 1. --out holds only what the build made ----------------------------------------------------------


def test_a_folder_holding_other_files_is_refused_and_left_as_it_was(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "my_data.arrow").write_bytes(b"mine")
    (out / "cache.tmp").mkdir()
    (out / "cache.tmp" / "x").write_bytes(b"mine too")
    for overwrite in (False, True):
        with pytest.raises(OutDirError, match="not made by sftdata build"):
            build([DATA / "alpaca.json"], out, BuildConfig(tokenizer=CHATML), overwrite=overwrite)
    assert (out / "my_data.arrow").read_bytes() == b"mine" and (out / "cache.tmp" / "x").exists()
    # a folder a build made, with a user's file put in it since: refused too, the file kept
    build([DATA / "alpaca.json"], tmp_path / "b", BuildConfig(tokenizer=CHATML))
    (tmp_path / "b" / "notes.txt").write_text("keep")
    with pytest.raises(OutDirError, match="notes.txt"):
        build([DATA / "alpaca.json"], tmp_path / "b", BuildConfig(tokenizer=CHATML), overwrite=True)
    assert (tmp_path / "b" / "notes.txt").read_text() == "keep"


def test_an_out_that_is_or_holds_an_input_is_refused(tmp_path):
    import datasets

    ds = tmp_path / "ds"
    datasets.Dataset.from_list([_chat()]).save_to_disk(str(ds))
    before = sorted((p.name, p.stat().st_size) for p in ds.iterdir())
    for out in (ds, ds / "inside"):
        with pytest.raises(OutDirError, match="overlaps the input"):
            build([ds], out, BuildConfig(tokenizer=CHATML))
    assert sorted((p.name, p.stat().st_size) for p in ds.iterdir()) == before
    first = tmp_path / "o"
    m = build([DATA / "alpaca.json"], first, BuildConfig(tokenizer=CHATML))
    with pytest.raises(OutDirError, match="overlaps the input"):  # a shard of a build, rebuilt into that build
        build([first / m.shards[0].name], first, BuildConfig(tokenizer=CHATML, format="messages"), overwrite=True)


def test_a_second_build_into_a_locked_folder_fails_at_once(tmp_path):
    out = tmp_path / "o"
    build([DATA / "alpaca.json"], out, BuildConfig(tokenizer=CHATML))
    shards = {p.name: p.read_bytes() for p in out.glob("shard-*.arrow")}
    with open(out / MARKER) as held:  # what a running build holds
        fcntl.flock(held, fcntl.LOCK_EX)
        started = time.perf_counter()
        with pytest.raises(OutDirError, match="another sftdata build is writing"):
            build([DATA / "messages.jsonl"], out, BuildConfig(tokenizer=CHATML), overwrite=True)
        assert time.perf_counter() - started < 30
    assert {p.name: p.read_bytes() for p in out.glob("shard-*.arrow")} == shards
    Manifest.read(out)  # still the first build, whole


def test_two_concurrent_builds_never_leave_a_mixed_build(tmp_path):
    big, small = _many(tmp_path / "big.jsonl", 3000), _write_jsonl(tmp_path / "small.jsonl", [_chat()])
    out = tmp_path / "o"
    args = ["--tokenizer", CHATML, "--out", str(out), "--quiet", "--no-report", "--workers", "1"]
    first = subprocess.Popen([sys.executable, "-m", "sftdata", "build", str(big), *args],
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    try:
        while not (out / MARKER).exists() and first.poll() is None:
            time.sleep(0.05)
        second = _cli("build", str(small), *args, "--overwrite")
    finally:
        first.wait(120)
    assert first.returncode == 0, first.stderr.read()
    if second.returncode != 0:  # it ran while the first held the folder
        assert second.returncode == 2 and "another sftdata build is writing" in second.stderr
    assert _cli("verify", str(out)).returncode == 0


def test_temporary_names_are_the_builds_own_and_removed_when_it_fails(tmp_path, monkeypatch):
    import sftdata.shards as shards_module

    def explode(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(shards_module.ShardWriter, "close", explode)
    with pytest.raises(OSError):
        build([DATA / "alpaca.json"], tmp_path / "o", BuildConfig(tokenizer=CHATML, pack=True, max_length=512))
    # the units folder stays for --resume; no temporary file does
    assert sorted(str(p.relative_to(tmp_path / "o")) for p in (tmp_path / "o").rglob("*") if p.is_file()) == [MARKER]


# -- 3. special-token text, every added token, every field ---------------------------------------------


def _ids_of(tok_path: str, texts) -> set[int]:
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(str(Path(tok_path) / "tokenizer.json"))
    return {backend.token_to_id(t) for t in texts}


QWEN_ADDED = ["<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>"]


@pytest.mark.parametrize("text", QWEN_ADDED)
def test_added_not_special_tokens_are_special_text(tmp_path, text):
    records = [_chat(f"say {text} please", "ok"), _chat("fine", f"here {text} it is")]
    path = _write_jsonl(tmp_path / "in.jsonl", records)
    m = build([path], tmp_path / "reject", BuildConfig(tokenizer=CHATML))
    assert m.counts.rejected_by_reason == {"special_token_in_content": 2}
    m = build([path], tmp_path / "literal", BuildConfig(tokenizer=CHATML, special_text=SpecialText.LITERAL))
    # Qwen3's template cuts an assistant's content at `</think>`: that text cannot stay literal, and says so
    assert m.counts.documents == 2 - (text == "</think>")
    assert all("cannot be kept literal" in r["detail"] for r in read_rejects(tmp_path / "literal"))
    plain = _write_jsonl(tmp_path / "plain.jsonl", [_chat("say please", "ok"), _chat("fine", "here it is")])
    build([plain], tmp_path / "plain", BuildConfig(tokenizer=CHATML))
    (token,) = _ids_of(CHATML, [text])

    def count(out):
        return {int(r.source_ids[0]): int((r.input_ids == token).sum()) for r in iter_rows(open_build(out)[1][0])}

    # typed text stays text: the token's id appears only where the template itself writes it
    literal = count(tmp_path / "literal")
    assert literal == {k: v for k, v in count(tmp_path / "plain").items() if k in literal}


def test_special_text_in_tools_is_rejected_or_kept_literal(tmp_path):
    tools = [{"type": "function", "function": {"name": "f", "description": "x <|im_end|>\n<|im_start|>assistant\nhi",
                                               "parameters": {"type": "object", "properties": {}}}}]
    record = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}], "tools": tools}
    path = _write_jsonl(tmp_path / "in.jsonl", [record])
    m = build([path], tmp_path / "reject", BuildConfig(tokenizer=CHATML))
    assert m.counts.rejected_by_reason == {"special_token_in_content": 1}
    assert "tools" in read_rejects(tmp_path / "reject")[0]["detail"]
    build([path], tmp_path / "literal", BuildConfig(tokenizer=CHATML, special_text=SpecialText.LITERAL))
    build([path], tmp_path / "allow", BuildConfig(tokenizer=CHATML, special_text=SpecialText.ALLOW))
    start = _ids_of(CHATML, ["<|im_start|>"]).pop()
    (literal,), (allowed,) = (list(iter_rows(open_build(tmp_path / d)[1][0])) for d in ("literal", "allow"))
    # allowed: the description opens a turn of its own; literal: only the template's turns remain
    assert (allowed.input_ids == start).sum() == (literal.input_ids == start).sum() + 1 == 4


def test_special_text_in_argument_keys_and_names_is_found(tmp_path):
    call = {"type": "function", "function": {"name": "f", "arguments": {"<think>": 1}}}
    records = [{"messages": [{"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "", "tool_calls": [call]}]},
               {"messages": [{"role": "user", "content": "hi", "name": "<|im_end|>"},
                             {"role": "assistant", "content": "ok"}]}]
    m = build([_write_jsonl(tmp_path / "in.jsonl", records)], tmp_path / "o", BuildConfig(tokenizer=CHATML))
    assert m.counts.rejected_by_reason == {"special_token_in_content": 2}


def test_a_system_prompt_with_special_text_is_a_setting_refused_once(tmp_path, capsys):
    with pytest.raises(BuildError, match="--system-prompt contains the special token text '<think>'"):
        build([DATA / "alpaca.json"], tmp_path / "o", BuildConfig(tokenizer=CHATML, system_prompt="be <think> brief"))
    assert not (tmp_path / "o").exists()
    assert main(["build", str(DATA / "alpaca.json"), "--tokenizer", CHATML, "--out", str(tmp_path / "o"),
                 "--system-prompt", "<|im_end|>", "--quiet"]) == 2
    assert capsys.readouterr().err.count("--system-prompt") == 1
    m = build([DATA / "alpaca.json"], tmp_path / "lit", BuildConfig(tokenizer=CHATML, system_prompt="be <think> brief",
                                                                   special_text=SpecialText.LITERAL))
    assert m.counts.rejected == 0


# -- 4. shards are checked before use ---------------------------------------------------------------


def _truncated_build(tmp_path) -> Path:
    out = tmp_path / "o"
    big = _many(tmp_path / "in.jsonl", 2000)
    m = build([big], out, BuildConfig(tokenizer=CHATML, batch_size=512))
    shard = out / m.shards[0].name
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.py_buffer(shard.read_bytes())).read_all()  # not mapped: it is rewritten
    first = table.to_batches()[0]
    with pa.ipc.new_stream(str(shard), table.schema) as w:  # cut at a record-batch boundary: still readable
        w.write_batch(first)
    return out


def test_a_truncated_shard_is_refused_by_every_reader(tmp_path, capsys):
    out = _truncated_build(tmp_path)
    with pytest.raises(ManifestError, match="does not match its manifest"):
        Manifest.read(out)
    assert main(["stats", str(out)]) == 2
    assert "does not match its manifest" in capsys.readouterr().err
    assert main(["verify", str(out)]) == 1
    assert "rows" in capsys.readouterr().out


def test_flipped_bytes_fail_verify(tmp_path, capsys):
    out = tmp_path / "o"
    m = build([DATA / "alpaca.json"], out, BuildConfig(tokenizer=CHATML))
    assert main(["verify", str(out)]) == 0
    shard = out / m.shards[0].name
    data = bytearray(shard.read_bytes())
    data[-40] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert main(["verify", str(out)]) == 1
    assert "SHA-256" in capsys.readouterr().out


# -- 5. one record never stops a build ---------------------------------------------------------------


def _nested(depth: int):
    value: object = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def test_deep_records_are_rejects(tmp_path):
    call = {"type": "function", "function": {"name": "f", "arguments": _nested(500)}}
    deep_call = json.dumps({"messages": [{"role": "user", "content": "q"},
                                         {"role": "assistant", "content": "", "tool_calls": [call]}]})
    path = tmp_path / "in.jsonl"
    path.write_text(json.dumps(_chat()) + "\n" + "[" * 100_000 + "\n" + deep_call + "\n" + json.dumps(_chat()) + "\n")
    m = build([path], tmp_path / "o", BuildConfig(tokenizer=CHATML))
    assert (m.counts.documents, m.counts.rejected_by_reason) == (2, {"malformed_record": 2})
    details = [r["detail"] for r in read_rejects(tmp_path / "o")]
    assert "nested deeper than" in details[0] and "nested more than 64 levels" in details[1]


def test_a_first_record_of_unknown_format_is_a_reject_like_any_other(tmp_path):
    path = _write_jsonl(tmp_path / "in.jsonl", [{"question": "?", "answer": "!"}, _chat(), {"question": "?"}])
    m = build([path], tmp_path / "o", BuildConfig(tokenizer=CHATML))
    assert (m.counts.documents, m.counts.rejected) == (1, 2)
    assert m.inputs[0].format == "messages"
    assert [r["source_id"] for r in read_rejects(tmp_path / "o")] == [0, 2]


# -- 6. workers die with the build --------------------------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except FileNotFoundError:  # a thread that ended between the listing and the read
            continue
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_no_worker_survives_a_killed_build(tmp_path):
    path = _many(tmp_path / "in.jsonl", 20_000)
    build_process = subprocess.Popen(
        [sys.executable, "-m", "sftdata", "build", str(path), "--tokenizer", CHATML, "--out", str(tmp_path / "o"),
         "--quiet", "--no-report", "--workers", "3", "--batch-size", "16"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.DEVNULL)
    deadline, children = time.monotonic() + 60, set()
    while len(children) < 2 and time.monotonic() < deadline and build_process.poll() is None:
        time.sleep(0.05)
        children = _children(build_process.pid)
    assert len(children) >= 2, "the build finished before its pool started"
    build_process.kill()  # what the OOM killer does
    build_process.wait()
    deadline = time.monotonic() + 10
    while any(map(_alive, children)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, children))


def _ctrl_c_as_in_a_terminal() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a test runner started in the background may ignore it


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_ctrl_c_exits_130_with_one_line_and_no_leftovers(tmp_path):
    path = _many(tmp_path / "in.jsonl", 20_000)
    out = tmp_path / "o"
    build_process = subprocess.Popen(
        [sys.executable, "-m", "sftdata", "build", str(path), "--tokenizer", CHATML, "--out", str(out),
         "--quiet", "--no-report", "--workers", "3", "--batch-size", "16"],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=_ctrl_c_as_in_a_terminal)
    deadline = time.monotonic() + 60
    while len(_children(build_process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(build_process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    _, err = build_process.communicate(timeout=60)
    assert build_process.returncode == 130
    assert err.strip() == "sftdata build: interrupted"
    # the units finished before Ctrl-C stay, whole, for --resume; nothing half written does
    assert sorted(p.name for p in out.iterdir()) in ([MARKER], [MARKER, UNITS])
    assert not [p.name for p in out.glob(f"{UNITS}/*") if p.name.endswith(".tmp")]


# -- 8. every error path: one message, exit 2 -----------------------------------------------------------


def _one_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.startswith("error:"), result.stderr
    for needle in needles:
        assert needle in " ".join(result.stderr.split()), result.stderr


def test_unreadable_inputs_are_one_message(tmp_path):
    (tmp_path / "bad.parquet").write_bytes(b"garbage")
    (tmp_path / "empty").mkdir()
    (tmp_path / "readme_only").mkdir()
    (tmp_path / "readme_only" / "README.md").write_text("# data\n")
    for name, needle in (("bad.parquet", "not a readable Parquet file"), ("empty", "a folder without data"),
                         ("readme_only", "a folder without data")):
        result = _cli("build", str(tmp_path / name), "--tokenizer", CHATML, "--out", str(tmp_path / f"o-{name}"),
                      "--quiet")
        _one_error(result, needle)
        assert not (tmp_path / f"o-{name}" / "manifest.json").exists()


def test_an_out_that_is_a_file_is_one_message(tmp_path):
    (tmp_path / "out").write_text("x")
    _one_error(_cli("build", str(DATA / "alpaca.json"), "--tokenizer", CHATML, "--out", str(tmp_path / "out"),
                    "--quiet"), "is a file")


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_a_full_disk_is_one_message_and_leaves_no_temporary_file(tmp_path):
    path = _many(tmp_path / "in.jsonl", 3000)
    out = tmp_path / "o"
    result = _cli("build", str(path), "--tokenizer", CHATML, "--out", str(out), "--quiet", "--workers", "1",
                  preexec_fn=_limit_file_size)
    _one_error(result, "cannot write the build")
    # what stays is the marker and the units finished whole (for --resume): no temporary file
    assert {p.name for p in out.iterdir()} <= {MARKER, UNITS}
    assert not [p for p in out.rglob("*.tmp") if p.is_file()]


def test_a_truncated_manifest_names_the_file(tmp_path, capsys):
    out = tmp_path / "o"
    build([DATA / "alpaca.json"], out, BuildConfig(tokenizer=CHATML))
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    for command in ("stats", "view", "verify"):
        assert main([command, str(out)]) in (1, 2)
        printed = capsys.readouterr()
        assert str(out / "manifest.json") in printed.err.replace("\n", "") + printed.out


# -- 9. accounting ----------------------------------------------------------------------------------------


def test_records_written_and_documents_are_counted_apart(tmp_path):
    long_chat = {"messages": [m for i in range(12) for m in ({"role": "user", "content": f"question {i} " * 20},
                                                              {"role": "assistant", "content": f"answer {i} " * 20})]}
    path = _write_jsonl(tmp_path / "in.jsonl", [long_chat, _chat()])
    m = build([path], tmp_path / "o", BuildConfig(tokenizer=CHATML, max_length=256, overlong=Overlong.SPLIT_TURNS))
    c, i = m.counts, m.inputs[0]
    assert c.records == c.records_written + c.rejected == 2 and c.documents > c.records_written
    assert (i.records, i.records_written, i.documents) == (c.records, c.records_written, c.documents)
    # the documents beyond one per record: split-turns pieces, and turns trained in their own context
    # (issue 14; a context document split into pieces counts in both)
    assert c.split_pieces <= c.documents - c.records_written <= c.split_pieces + c.context_documents


@pytest.mark.parametrize("pack", [False, True])
def test_a_build_that_writes_no_document_exits_1_after_its_manifest(tmp_path, capsys, pack):
    path = _write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "no reply"}]}])
    out = tmp_path / "o"
    args = ["build", str(path), "--tokenizer", CHATML, "--out", str(out), "--quiet", "--no-report"]
    assert main(args + (["--pack", "--max-length", "64"] if pack else [])) == 1
    assert "no document written" in capsys.readouterr().err
    m = Manifest.read(out)
    assert (m.counts.rows, m.counts.rejected, len(read_rejects(out))) == (0, 1, 1)
    if pack:
        assert m.packing.rows == 0


def test_the_command_exits_with_its_code_and_everything_it_printed(tmp_path):
    """`python -m sftdata` ends without the interpreter's teardown (cli.run): its exit code and its last
    lines still arrive, through a pipe too."""
    path = _write_jsonl(tmp_path / "in.jsonl", [{"messages": [{"role": "user", "content": "no reply"}]}])
    done = subprocess.run([sys.executable, "-m", "sftdata", "build", str(path), "--tokenizer", CHATML, "--out",
                           str(tmp_path / "o"), "--no-report"], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 1
    assert "no document written" in done.stderr and done.stderr.rstrip().endswith("/o/rejects.jsonl")


# -- 7: a turn that renders empty never trains its end-of-turn token alone ---------------------------------

EMPTY_TURNS = [  # each: an assistant turn with no rendered text of its own, then a real reply
    [{"role": "assistant", "content": "\n"}],
    [{"role": "assistant", "content": "\u0085"}],  # NEL: whitespace to Python, so to trimming templates
    [{"role": "assistant", "content": "", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": {"x": 1}}}]}, {"role": "tool", "content": "42"}],
    [{"role": "assistant", "content": "", "reasoning_content": "think hard"}],
]


@pytest.mark.parametrize("unrendered", ["reject", "drop"])
def test_a_turn_that_renders_empty_is_never_trained_as_its_end_of_turn_token(tmp_path, unrendered):
    # the fixture Llama-3 template renders neither tool calls nor reasoning
    records = [{"messages": [{"role": "user", "content": "q"}, *empty, {"role": "user", "content": "again"},
                             {"role": "assistant", "content": "real"}]} for empty in EMPTY_TURNS]
    src = tmp_path / "empty.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    tokenizer = fixture_tokenizer("llama3-bpe")
    manifest = build([src], tmp_path / "o", BuildConfig(tokenizer=tokenizer, workers=1, unrendered=unrendered))
    backend = Worker(BuildConfig(tokenizer=tokenizer)).tokenizer.backend
    _, tables = open_build(tmp_path / "o")
    trained = {}
    for row in (r for t in tables for r in iter_rows(t)):
        targets = row.input_ids[row.loss_mask.astype(bool)].tolist()
        trained[int(row.source_ids[0])] = backend.decode(targets, skip_special_tokens=False)
    # only the real reply and its end-of-turn token: no lone <|eot_id|> for the empty turn before it
    assert set(trained.values()) == {"real<|eot_id|>"}
    expected_rejects = {"unrendered_field": 2} if unrendered == "reject" else {}
    assert manifest.counts.rejected_by_reason == expected_rejects
    assert sorted(trained) == ([0, 1] if unrendered == "reject" else [0, 1, 2, 3])
