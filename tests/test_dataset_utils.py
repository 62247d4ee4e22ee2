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


def test_missing_file_is_named(tmp_path):
    with pytest.raises(du.DataError, match="nope.jsonl: file not found"):
        du.load_conversations(tmp_path / "nope.jsonl")


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
    assert len(rows) == 2 and max(len(r["input_ids"]) for r in rows) == 512
    assert all(len(r["input_ids"]) == len(r["assistant_masks"]) for r in rows)
    rows, stats = du.tokenize_conversations([short, long_answer, long_prompt], tok, tpl, 512, "drop")
    assert len(rows) == 1 and stats["over_max_length"] == 2


def test_finetome_falls_back_to_the_shipped_set_without_a_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty-cache"))
    rows, source = du.load_finetome()
    assert "OfflineModeIsEnabled" in source  # cache only: the hub is never asked, so no download retries
    assert len(rows) >= 550 and "general_instructions.jsonl" in source and "not cached" in source
    share = tmp_path / "share.jsonl"
    share.write_text(json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}) + "\n")
    rows, source = du.load_finetome(str(share))
    assert len(rows) == 1 and source == f"local ShareGPT file {share}"
