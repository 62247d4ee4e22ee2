"""Resume state in the local git repository (training/resume_store.py): byte-identical round trip, the user's branch,
index and working tree untouched, never cloned, each snapshot replacing the last; and a run that resumes from git
after its checkpoints/ folder is gone."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from conftest import run_script

from training import resume_store as rs
from training.config import TrainConfig

RUN = "tiny-run"


def git(cwd, *args: str, check: bool = True) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True, check=check).stdout.strip()


@pytest.fixture
def repo(tmp_path):
    """A repository with a commit, a staged file, an unstaged change, an untracked file, and attributes that would
    rewrite line endings of anything hashed through filters."""
    r = tmp_path / "repo"
    r.mkdir()
    git(r, "init", "-q")
    (r / ".gitattributes").write_text("* text eol=crlf\n")
    (r / "README.md").write_text("hello\n")
    git(r, "add", ".")
    git(r, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    (r / "README.md").write_text("changed\n")
    (r / "staged.txt").write_text("staged\n")
    git(r, "add", "staged.txt")
    (r / "untracked.txt").write_text("untracked\n")
    return r


def fake_checkpoint(folder, step: int, seed: int = 0):
    import random

    rnd = random.Random(seed)
    path = folder / f"checkpoint-{step}"
    (path / "nested").mkdir(parents=True)
    for name, size in (("adapter_model.safetensors", 300_000), ("optimizer.pt", 600_000), ("scheduler.pt", 1_000),
                       ("rng_state.pth", 15_000), ("nested/extra.bin", 10)):
        (path / name).write_bytes(rnd.randbytes(size))
    (path / "trainer_state.json").write_bytes(json.dumps({"global_step": step}).encode() + b"\r\nline two\r\n")
    return path


def files_of(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_state(r) -> tuple:
    git(r, "status", "--porcelain")  # refreshes the index once, so its bytes compare below
    return ((r / ".git" / "index").read_bytes(), git(r, "status", "--porcelain", "--untracked-files=all"), git(r, "rev-parse", "HEAD"),
            git(r, "symbolic-ref", "HEAD"), git(r, "ls-files", "-s"), git(r, "for-each-ref", "refs/heads", "refs/tags"))


def test_round_trip_is_byte_identical_and_leaves_the_user_state_alone(repo, tmp_path):
    src = fake_checkpoint(tmp_path / "checkpoints", 7)
    before = user_state(repo)
    sha = rs.save(repo, RUN, src, required=("trainer_state.json", "optimizer.pt"))
    info = rs.latest(repo, RUN)
    assert info["sha"] == sha and info["step"] == 7 and info["files"] == 6 and info["ref"] == "refs/peftlab/resume/tiny-run"
    assert info["size"] == sum(len(b) for b in files_of(src).values()) and info["created"]
    assert rs.label(info) == f"git:refs/peftlab/resume/{RUN}@{sha[:10]}"

    out = tmp_path / "restored"
    path = rs.restore(repo, RUN, out)
    assert path == out / "checkpoint-7"
    assert files_of(path) == files_of(src)  # raw bytes: no line-ending filter on the way in or out
    assert [p.name for p in out.iterdir()] == ["checkpoint-7"], "no staging folder left behind"
    assert user_state(repo) == before, "HEAD, branch, index and working tree must not change"
    assert rs.restore(repo, RUN, out) == path, "an identical folder already there is accepted"
    (path / "optimizer.pt").write_bytes(b"other")
    with pytest.raises(rs.StoreError, match="differs"):
        rs.restore(repo, RUN, out)


def test_a_clone_never_carries_the_snapshot(repo, tmp_path):
    sha = rs.save(repo, RUN, fake_checkpoint(tmp_path / "c", 3))
    blob = git(repo, "rev-parse", f"{sha}:optimizer.pt")
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", f"file://{repo}", str(clone)], check=True, capture_output=True)
    assert "peftlab" not in git(clone, "for-each-ref")
    assert subprocess.run(["git", "-C", str(clone), "cat-file", "-e", blob], capture_output=True).returncode != 0
    assert rs.latest(clone, RUN) is None and rs.runs(clone) == []


def test_a_second_save_replaces_the_first(repo, tmp_path):
    first = rs.save(repo, RUN, fake_checkpoint(tmp_path / "c", 2, seed=1))
    second = rs.save(repo, RUN, fake_checkpoint(tmp_path / "c", 4, seed=2))
    assert first != second and git(repo, "rev-parse", rs.ref_name(RUN)) == second
    assert git(repo, "rev-list", "--parents", rs.ref_name(RUN)) == second, "one parentless commit"
    assert "parent " not in git(repo, "cat-file", "commit", second)
    assert "step: 4" in git(repo, "log", "-1", "--format=%B", second) and RUN in git(repo, "log", "-1", "--format=%s", second)
    assert rs.latest(repo, RUN)["step"] == 4
    assert [i["run"] for i in rs.runs(repo)] == [RUN]
    assert files_of(rs.restore(repo, RUN, tmp_path / "r")) == files_of(tmp_path / "c" / "checkpoint-4")


def test_drop_incomplete_and_unavailable(repo, tmp_path):
    src = fake_checkpoint(tmp_path / "c", 5)
    (src / "scheduler.pt").unlink()
    with pytest.raises(rs.StoreError, match="scheduler.pt"):
        rs.save(repo, RUN, src, required=("trainer_state.json", "scheduler.pt"))
    assert rs.latest(repo, RUN) is None and rs.restore(repo, RUN, tmp_path / "r") is None
    rs.save(repo, RUN, src)
    assert rs.drop(repo, RUN) and not rs.drop(repo, RUN)
    assert rs.latest(repo, RUN) is None and "peftlab" not in git(repo, "for-each-ref")

    outside = tmp_path / "not-a-repo"
    outside.mkdir()
    assert rs.available(repo) and rs.available(repo / "models" / "not-yet") and not rs.available(outside)
    assert rs.enabled("auto", repo) and not rs.enabled("auto", outside) and not rs.enabled("none", repo)
    with pytest.raises(rs.StoreError, match="not inside a git work tree"):
        rs.enabled("git", outside)
    with pytest.raises(rs.StoreError, match="cannot name a git ref"):
        rs.ref_name("bad..name")
    with pytest.raises(ValueError, match="resume_store"):
        TrainConfig(resume_store="yes")


def test_cli_lists_and_drops(repo, tmp_path, capsys):
    rs.save(repo, RUN, fake_checkpoint(tmp_path / "c", 9))
    assert rs.main(["list", "--root", str(repo)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(RUN) and "step       9" in line and "KB" in line
    assert rs.main(["drop", RUN, "--root", str(repo)]) == 0 and rs.main(["drop", RUN, "--root", str(repo)]) == 1
    assert rs.main(["list", "--root", str(repo)]) == 0 and "no resume snapshots" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        rs.main(["--help"])
    assert "Clones do not carry this state" in capsys.readouterr().out


def test_the_save_hook_snapshots_complete_checkpoints_and_only_warns(repo, tmp_path, capsys):
    from types import SimpleNamespace

    from training.run import snapshot_callback

    cfg = TrainConfig(root=str(repo), run_name=RUN)
    hook, args = snapshot_callback(cfg), SimpleNamespace(output_dir=str(tmp_path / "c"))
    fake_checkpoint(tmp_path / "c", 3)
    (tmp_path / "c" / "checkpoint-3" / "scheduler.pt").unlink()
    hook.on_save(args, SimpleNamespace(global_step=3, is_world_process_zero=True), None)
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "[resume] warning" in out and "scheduler.pt" in out and rs.latest(repo, RUN) is None
    fake_checkpoint(tmp_path / "c", 4)
    hook.on_save(args, SimpleNamespace(global_step=4, is_world_process_zero=False), None)
    assert rs.latest(repo, RUN) is None, "only the main process snapshots"
    hook.on_save(args, SimpleNamespace(global_step=4, is_world_process_zero=True), None)
    assert rs.latest(repo, RUN)["step"] == 4 and capsys.readouterr().out == ""


@pytest.mark.slow  # two tiny training runs in fresh interpreters: about 25 s
def test_a_run_resumes_from_git_after_its_checkpoints_are_gone(tiny_model_dir, exam_file, repo):
    from test_training import tiny_args

    run = "tiny-llama-lora-exam"
    head = git(repo, "rev-parse", "HEAD")
    args = tiny_args(tiny_model_dir, exam_file, repo, "--save_steps", "1", "--save_total_limit", "1")
    r = run_script("training/train_smollm2_135m_lora_exam.py", *args, "--max_steps", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "warning" not in r.stdout and rs.latest(repo, run)["step"] == 2

    shutil.rmtree(repo / "checkpoints")  # a new session: checkpoints/ did not survive
    r = run_script("training/train_smollm2_135m_lora_exam.py", *args, "--max_steps", "3", "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "[resume] restored git:refs/peftlab/resume/tiny-llama-lora-exam@" in r.stdout
    record = json.loads((repo / "training_logs" / f"{run}.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 3
    assert record["resolved"]["resumed_from"].startswith(f"git:refs/peftlab/resume/{run}@")
    logs = [json.loads(x) for x in (repo / "training_logs" / f"{run}.jsonl").read_text().splitlines()]
    begins = [x for x in logs if x["event"] == "train_begin"]
    assert begins[-1]["resumed"] and begins[-1]["step"] == 2
    assert [x["step"] for x in logs if x["event"] == "log" and "loss" in x] == [1, 2, 3]
    assert rs.latest(repo, run)["step"] == 3, "the resumed run's checkpoints replace the snapshot"
    assert git(repo, "rev-parse", "HEAD") == head
