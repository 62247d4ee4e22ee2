"""Iris in a real browser: Playwright drives Debian's Chromium through generate quiz -> answer -> score.

Needs /usr/bin/chromium (`apt-get install chromium`; .ci/run installs it). Generation is capped at a few tokens,
so the quiz comes from the stricter re-ask or the question bank: still a quiz the student answers and gets scored on.
The screenshot lands in tests/artifacts/ (git-ignored).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_iris_app import running_iris

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium: apt-get install -y chromium"),
]


@pytest.fixture(scope="module")
def iris_url(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iris_browser")
    with running_iris(folder, folder / "iris.log") as url:
        yield url


def test_generate_answer_and_score_a_quiz(iris_url):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--no-first-run"],
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(iris_url, wait_until="domcontentloaded", timeout=120_000)
            page.get_by_role("tab", name="Quiz Generator").click()
            page.locator("#quiz-topic textarea, #quiz-topic input").first.fill("LoRA")
            page.locator("#quiz-generate").click()
            expect(page.locator("#quiz-view")).to_contain_text("Question 1.", timeout=240_000)
            answers = page.locator("[id^='quiz-answer-']:visible")
            expect(answers.first).to_be_visible(timeout=60_000)
            n = answers.count()
            assert n >= 1
            for i in range(n):  # pick option A everywhere: the score is then the number of A answers
                answers.nth(i).locator("input[type=radio]").first.check()
            page.locator("#quiz-check").click()
            score = page.locator("#quiz-score")
            expect(score).to_contain_text("Score:", timeout=120_000)
            match = re.search(r"Score: (\d+) / (\d+)", score.inner_text())
            assert match and int(match.group(2)) == n and 0 <= int(match.group(1)) <= n
            assert "the answer is" in score.inner_text()
            page.screenshot(path=str(ARTIFACTS / "iris_quiz.png"), full_page=True)
        finally:
            browser.close()
    assert (ARTIFACTS / "iris_quiz.png").stat().st_size > 10_000
