"""tools/benchmark_ab.py: the CPU training rows at two commits. The rows themselves are tools/benchmark.py's (tested in
test_benchmark.py); here the table and the command line."""

from __future__ import annotations

import pytest

from tools import benchmark_ab as AB


def row(config, side, tps, step, rss, loss=3.5, rep=0):
    return {"rep": rep, "config": config, "side": side, "tokens_per_s": tps, "step_p50_s": step, "peak_rss_mb": rss, "loss_after_k_steps": loss}


def test_summary_takes_medians_per_side_and_ratios_here_over_base():
    rows = [row("default", "base", 100, 2.0, 1000), row("default", "here", 90, 2.2, 1100),
            row("default", "base", 120, 1.8, 1000, rep=1), row("default", "here", 130, 1.9, 900, rep=1),
            row("default", "base", 110, 1.9, 1000, rep=2), row("default", "here", 99, 2.0, 1000, rep=2),
            row("qlora", "base", 50, 4.0, 500, loss=3.9)]  # qlora has no 'here' run: left out
    [t] = AB.summarize(rows)
    assert t["config"] == "default" and t["reps"] == 3
    assert t["base_tokens_per_s"] == 110 and t["here_tokens_per_s"] == 99 and t["tokens_per_s_ratio"] == pytest.approx(0.9)
    assert t["step_p50_s_ratio"] == pytest.approx(2.0 / 1.9) and t["peak_rss_ratio"] == 1.0 and t["losses"] == [3.5]
    md = AB.markdown([t], "abc123", "def456", "Some CPU (AMX, 2 threads)")
    assert "`abc123` (base) against `def456` (here), on Some CPU" in md and "| default | 3 | 110 | 99 | 0.90 |" in md


def test_a_changed_loss_shows_both_values():
    [t] = AB.summarize([row("default", "base", 100, 2, 1, loss=3.5), row("default", "here", 100, 2, 1, loss=3.6)])
    assert t["losses"] == [3.5, 3.6]


@pytest.mark.parametrize("argv, message", [
    ([], "--base is required"),
    (["--base", "HEAD", "--configs", "default,fastest"], "not ['fastest']"),
    (["--base", "HEAD", "--reps", "0"], "--reps and --steps take 1 or more"),
    (["--base", "no-such-commit-anywhere"], "error: git rev-parse"),
])
def test_bad_command_lines_say_what_to_do(argv, message):
    with pytest.raises(SystemExit) as e:
        AB.main(argv)
    assert message in str(e.value)
