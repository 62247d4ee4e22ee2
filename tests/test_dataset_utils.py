"""Every validation problem names its file and physical line; lenient mode counts skips per reason."""

import json

import pytest

from training import dataset_utils as du

GOOD = {"conversations": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}

CASES = [
    ("bad JSON", '{"conversations": [', "bad JSON"),
    ("missing field", json.dumps({"text": "x"}), 'no "conversations" or "messages" field'),
    ("empty content", json.dumps({"conversations": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "a"}]}), "turn 0 (user) has empty content"),
    ("unknown role", json.dumps({"conversations": [{"from": "teacher", "value": "q"}, {"from": "gpt", "value": "a"}]}), "unknown role 'teacher'"),
    ("turns do not alternate", json.dumps({"conversations": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"}, {"role": "assistant", "content": "a"}]}), "turn 1 is 'user', expected 'assistant'"),
    ("ends on a user turn", json.dumps({"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}, {"role": "user", "content": "q2"}]}), "ends on a user turn"),
]


def write(tmp_path, lines):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.mark.parametrize("reason,line,message", CASES, ids=[c[0] for c in CASES])
def test_strict_names_file_line_and_problem(tmp_path, reason, line, message):
    # the bad row sits on physical line 4, after two good rows and a blank line
    p = write(tmp_path, [json.dumps(GOOD), json.dumps(GOOD), "", line, json.dumps(GOOD)])
    with pytest.raises(du.DataError) as e:
        du.load_conversations(p, strict=True)
    assert f"{p}:4:" in str(e.value)
    assert message in str(e.value)
    assert "pass --strict_data false" in str(e.value) and "\n" not in str(e.value)


def test_lenient_skips_and_counts_each_reason(tmp_path, capsys):
    p = write(tmp_path, [json.dumps(GOOD)] + [c[1] for c in CASES] + [CASES[0][1]])
    rows = du.load_conversations(p, strict=False)
    assert len(rows) == 1
    out = capsys.readouterr().out
    assert "kept 1 of 8" in out
    assert "2 bad JSON" in out
    for reason, _, _ in CASES[1:]:
        assert f"1 {reason}" in out


def test_formats_normalise_to_messages(tmp_path):
    share = {"conversations": [{"from": "system", "value": "s"}, {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    openai = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "kind": "quiz"}
    rows = du.load_conversations(write(tmp_path, [json.dumps(share), json.dumps(GOOD), json.dumps(openai)]))
    assert [m["role"] for m in rows[0]["messages"]] == ["system", "user", "assistant"]
    assert rows[2]["kind"] == "quiz" and rows[2]["_line"] == 3


def test_sampling_and_holdout_are_deterministic():
    rows = [{"messages": [], "i": i} for i in range(100)]
    assert du.sample(rows, 10, 1) == du.sample(rows, 10, 1)
    assert du.sample(rows, 10, 1) != du.sample(rows, 10, 2)
    train, held = du.split_holdout(rows, 0.2, seed=3)
    assert len(held) == 20 and len(train) == 80
    assert not {r["i"] for r in train} & {r["i"] for r in held}


def one_line_error(path, strict=True) -> str:
    with pytest.raises(du.DataError) as e:
        du.load_conversations(path, strict=strict)
    message = str(e.value)
    assert "\n" not in message and str(path) in message
    return message


def test_missing_file_is_named(tmp_path):
    assert "nope.jsonl: file not found: pass the path of a .jsonl file" in one_line_error(tmp_path / "nope.jsonl")


def test_directory_says_it_is_one(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    message = one_line_error(folder)
    assert message.startswith(f"{folder}: is a directory") and "pass a .jsonl file" in message


def test_non_utf8_byte_names_line_column_and_offset(tmp_path):
    p = tmp_path / "latin1.jsonl"
    good = (json.dumps(GOOD) + "\n").encode()
    bad = '{"conversations": [{"role": "user", "content": "caf\u00e9"}]}\n'.encode("latin-1")  # 0xe9 at column 52
    p.write_bytes(good + b"\n" + bad + good)
    message = one_line_error(p)
    assert f"{p}:3: not UTF-8: byte 0xe9 at column 52 (byte offset {len(good) + 1 + 51} of the file)" in message
    assert "Re-save the file as UTF-8" in message and "--strict_data false" in message
    rows = du.load_conversations(p, strict=False)
    assert [r["_line"] for r in rows] == [1, 4]


def test_non_utf8_column_counts_characters_not_bytes(tmp_path):
    p = tmp_path / "mixed.jsonl"
    p.write_bytes('{"a": "\u00e9\u00e9", "b": "'.encode() + b"\xff" + b'"}\n')  # two 2-byte characters before the bad byte
    assert ":1: not UTF-8: byte 0xff at column 19 (byte offset 20 of the file)" in one_line_error(p)


def test_utf16_file_is_one_error(tmp_path):
    p = tmp_path / "notepad.jsonl"
    p.write_text(json.dumps(GOOD) + "\n", encoding="utf-16")
    assert f"{p}:1: the file is UTF-16" in one_line_error(p) and "Re-save it as UTF-8" in one_line_error(p)


def test_bom_is_accepted_with_a_one_line_note(tmp_path, capsys):
    p = tmp_path / "windows.jsonl"
    p.write_text(json.dumps(GOOD) + "\r\n" + json.dumps(GOOD) + "\r\n", encoding="utf-8-sig")
    rows = du.load_conversations(p)
    assert len(rows) == 2 and rows[0]["messages"][0]["content"] == "Hi"
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"note: {p}: skipped a UTF-8 byte-order mark (BOM) at the start of line 1"]


@pytest.mark.parametrize("text,where", [
    ('{"conversations": ', "column 19 (end of line)"),  # the line break once made this "column 1"
    ('  {"a": tru}', "column 9"),  # leading whitespace counts
    ('\ufeff  {"a": tru}', "column 9"),  # a BOM, hidden by editors, does not
], ids=["end of line", "leading whitespace", "after a BOM"])
def test_json_error_column_is_the_column_in_the_line(tmp_path, text, where):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps(GOOD) + "\n" + text + "\n", encoding="utf-8")
    assert f"{p}:2: bad JSON (Expecting value at {where})." in one_line_error(p)


def test_training_script_ends_with_one_line_and_no_traceback(tmp_path, capsys, embedded_model_dir):
    from training.config import STAGE2
    from training.run import run

    p = tmp_path / "latin1.jsonl"
    p.write_bytes('{"conversations": [{"role": "user", "content": "caf\u00e9"}]}\n'.encode("latin-1"))
    with pytest.raises(SystemExit) as e:
        run(STAGE2, ["--model", str(embedded_model_dir), "--data_path", str(p), "--root", str(tmp_path)])
    message = e.value.code  # a string exit code: Python prints it as the one line on stderr and exits with status 1
    assert isinstance(message, str) and "\n" not in message
    assert message.startswith(f"error: {p}:1: not UTF-8: byte 0xe9 at column 52") and "--strict_data false" in message
    assert "Traceback" not in capsys.readouterr().err


def test_tokenize_counts_truncates_or_drops_over_length(embedded_model_dir):
    from transformers import AutoTokenizer

    from training.chat_templates import training_template

    tok = AutoTokenizer.from_pretrained(embedded_model_dir)
    tpl = training_template(tok)
    short = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    long_answer = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "word " * 600}]}
    long_prompt = {"messages": [{"role": "user", "content": "word " * 600}, {"role": "assistant", "content": "a"}]}
    rows, stats = du.tokenize_conversations([short, long_answer, long_prompt], tok, tpl, 512, "truncate")
    assert stats["over_max_length"] == 2 and stats["dropped_no_assistant_tokens"] == 1  # the prompt alone fills 512
    assert stats["truncated"] == 1 and stats["dropped_over_length"] == 0
    assert stats["summary"] == "1 conversation truncated to 512 tokens; 1 dropped: no assistant tokens left within 512 tokens"
    assert len(rows) == 2 and max(len(r["input_ids"]) for r in rows) == 512
    assert all(len(r["input_ids"]) == len(r["assistant_masks"]) for r in rows)
    rows, stats = du.tokenize_conversations([short, long_answer, long_prompt], tok, tpl, 512, "drop")
    assert len(rows) == 1 and stats["over_max_length"] == 2
    assert (stats["truncated"], stats["dropped_over_length"], stats["dropped_no_assistant_tokens"]) == (0, 2, 0)
    assert stats["summary"] == "2 conversations dropped: over 512 tokens"
    assert du.tokenize_conversations([short], tok, tpl, 512)[1]["summary"] == "no conversation over 512 tokens"


def test_length_summary_says_what_was_truncated_and_what_dropped():
    stats = {"max_length": 512, "truncated": 2, "dropped_over_length": 0, "dropped_no_assistant_tokens": 1}
    assert du.length_summary(stats) == "2 conversations truncated to 512 tokens; 1 dropped: no assistant tokens left within 512 tokens"
    stats = {"max_length": 512, "truncated": 0, "dropped_over_length": 0, "dropped_no_assistant_tokens": 1}
    assert du.length_summary(stats) == "1 conversation dropped: no assistant tokens left within 512 tokens"


def test_finetome_falls_back_to_the_shipped_set_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    rows, source = du.load_finetome()
    assert "OfflineModeIsEnabled" in source  # cache only: the hub is never asked, so no download retries
    assert len(rows) >= 550 and "general_instructions.jsonl" in source and "not cached" in source
    share = tmp_path / "share.jsonl"
    share.write_text(json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}) + "\n")
    rows, source = du.load_finetome(str(share))
    assert len(rows) == 1 and source == f"local ShareGPT file {share}"
