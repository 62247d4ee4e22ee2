"""Course notes for Study Chat (iris/notes.py): retrieval, the grounded training rows, and the prompt Iris sends."""

from __future__ import annotations

import json

import pytest

from evaluation import prompts as eval_prompts
from iris import logic, notes, prompts, tasks
from tools import build_datasets
from training import dataset_utils as du

TOPIC = {
    "id": "lora", "title": "LoRA", "summary": "Low-rank adaptation trains two small matrices beside a frozen weight.",
    "key_points": ["The update is B A with rank r much smaller than the weight's dimensions.", "Alpha over r scales the update."],
    "pitfalls": ["Thinking LoRA makes the forward pass cheaper."],
    "qa": [{"q": "Why is LoRA cheap to train?", "a": "Only the low-rank matrices get gradients and optimizer state."}],
    "compare": [{"q": "How does LoRA differ from full fine-tuning?", "a": "Full fine-tuning updates every weight; LoRA only adds a low-rank update."}],
    "test": [{"question": "held out", "reference": "never indexed", "key_concepts": ["secret"]}],
}
OTHER = {**TOPIC, "id": "feature_store", "title": "Feature stores", "summary": "A feature store serves the same features offline and online.",
         "key_points": ["Point-in-time correct joins prevent label leakage in training data."], "pitfalls": ["Computing features twice."],
         "qa": [{"q": "What is a feature store?", "a": "A data platform that stores features for training and serving."}], "compare": [],
         "test": []}


@pytest.fixture()
def index():
    return notes.Notes([notes.Passage(**p) for p in notes.passages([{"topics": [TOPIC, OTHER]}])])


def test_passages_cover_the_notes_and_worked_answers_but_never_the_test_split(index):
    kinds = [p.kind for p in index.items if p.id.startswith("lora-")]
    assert kinds == ["summary", "key_point", "key_point", "pitfall", "concept", "compare"]
    assert not [p for p in index.items if "never indexed" in p.text or "held out" in p.text]
    # qa and compare items carry the id of the training row built from them, so a row can leave its own source out
    assert {"lora-concept-0", "lora-compare-0", "feature_store-concept-0"} <= {p.id for p in index.items}


def test_retrieval_ranks_the_matching_topic_first_and_skips_chit_chat(index):
    found = index.retrieve("Why does a feature store need point-in-time joins?", k=2)
    assert found and found[0].topic == "Feature stores"
    assert index.retrieve("thanks, hello!") == [] and index.retrieve("What is LoRA?", k=0) == []
    assert all(p.id != "lora-concept-0" for p in index.retrieve("Why is LoRA cheap to train?", k=5, exclude={"lora-concept-0"}))
    assert index.retrieve("Why is LoRA cheap to train?", k=1, min_score=0)[0].id == "lora-concept-0"


def test_the_prompt_shows_the_notes_as_bullets_and_the_student_their_topics(index):
    found = index.retrieve("How does LoRA differ from full fine-tuning, and why is it cheap?", k=3, min_score=0)
    system = prompts.chat_system(notes.texts(found))
    assert system.startswith(prompts.SYSTEM_PROMPTS["study_chat"] + "\n\n" + prompts.NOTES_HEADER + "\n- ")
    assert system.count("\n- ") == len(found) == 3 and all(p.text in system for p in found)
    assert notes.sources(found) == "LoRA" and prompts.chat_system([]) == prompts.SYSTEM_PROMPTS["study_chat"]


def words(text: str) -> int:
    return len(text.split())


def test_trimming_drops_old_turns_before_notes_and_notes_before_refusing():
    passages = ["LoRA adds a low-rank update B A to a frozen weight.", "QLoRA stores the frozen base in 4-bit NF4. " * 5]
    history = [{"role": "user", "content": "old " * 50}, {"role": "assistant", "content": "reply " * 50}]
    sent, dropped, kept = tasks.chat_messages(history, "What is LoRA?", words, 250, 100, passages)
    assert kept == 2 and dropped == 2 and sent[0]["content"] == prompts.chat_system(passages)  # the old turn went, the notes stayed
    n_ctx = 100 + 8 + words(prompts.chat_system(passages[:1])) + words("What is LoRA?") + 2 * logic.MESSAGE_OVERHEAD  # the first passage only
    sent, dropped, kept = tasks.chat_messages([], "What is LoRA?", words, n_ctx, 100, passages)
    assert kept == 1 and sent[0]["content"] == prompts.chat_system(passages[:1])
    with pytest.raises(logic.InputError):  # the message alone does not fit: still a clear refusal
        tasks.chat_messages([], "word " * 500, words, 250, 100, passages)


def test_shipped_index_is_current_and_answers_a_course_question():
    shipped = json.loads(notes.NOTES.read_text(encoding="utf-8"))["passages"]
    files = [json.loads(p.read_text(encoding="utf-8")) for p in sorted((build_datasets.SOURCES / "kb").glob("*.json"))]
    assert shipped == notes.passages(files)
    found = notes.load().retrieve("Why does QLoRA store the base model in NF4?")
    assert len(found) == notes.K and any("NF4" in p.text for p in found)


def test_every_grounded_row_is_its_chat_row_with_the_notes_of_an_unseen_question():
    plain = {r["id"]: r for r in du.load_conversations(du.EXAM_DATA) if r["kind"] in ("concept", "compare")}
    grounded = du.load_conversations(du.EXAM_GROUNDED_DATA)
    assert sorted(r["id"].removesuffix("-grounded") for r in grounded) == sorted(plain)
    index = notes.load()
    for r in grounded[::50]:
        source = r["id"].removesuffix("-grounded")
        message = r["prompt"]["args"]["message"]
        want = notes.texts(index.retrieve(message, exclude={source}))
        assert len(want) == notes.K and r["prompt"]["args"]["notes"] == want
        assert plain[source]["messages"][-1]["content"][:80] not in r["messages"][0]["content"]  # its own answer is not in its notes
        assert r["messages"][:2] == tasks.chat_messages([], message, lambda t: len(t.split()), 4096, 512, want)[0]
        assert r["messages"][2:] == plain[source]["messages"][2:]  # the same answer as the plain row


def test_evaluation_puts_the_notes_iris_would_send_into_the_test_prompts():
    bare = eval_prompts.test_items(limit=2)
    grounded = eval_prompts.test_items(limit=2, notes=3)
    for b, g in zip(bare, grounded):
        question = b["messages"][1]["content"]
        assert g["messages"] == prompts.chat_prompt([], question, notes.texts(notes.load().retrieve(question, 3)))
        assert g["reference"] == b["reference"] and g["messages"][0] != b["messages"][0]
