"""The chain explorer in a real browser against a real 4-node consortium.

Debian's ``chromium`` driven by Playwright (the system browser: Playwright never downloads
one), four ``bcfl node`` processes on 127.0.0.1 training the demo's digits model, one of them
a ``scaling`` attacker whose boosted update the contract rejects (norm bound 10, ~6x an honest
first-round update). The page must load from the node alone, show rounds as they close without
a reload, show the rejected update with its reason, and link a block to its transactions.
Skipped, with the reason, where chromium or the playwright package is missing (``make test``
installs both).
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bcfl_cli.demo.launcher import LocalConsortium, MemberPlan
from bcfl_cli.demo.run import DemoOptions, genesis_plan
from tests.network.cluster import DIGITS_4, GENESIS_TIME_MS, PASSPHRASE

pytestmark = [pytest.mark.network]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ROUNDS = 3
HOSTILE_NAME = '<img src=x onerror="document.title=1"> demo'
#: Each wait for the page; a round of four 5-epoch trainings takes seconds, start-up more.
WAIT_MS = 90_000


def explorer_consortium(
    root: Path,
    *,
    rounds: int = ROUNDS,
    name: str | None = None,
    genesis_time_ms: int = GENESIS_TIME_MS,
) -> LocalConsortium:
    """Four members on the demo's genesis (digits MLP, norm bound 10), the last a ``scaling``
    attacker; each trains with a fixed seed, so every run submits the same updates."""
    from bcfl_cli.fl.training import subseed  # torch: imported where the test runs

    options = DemoOptions(members=4, rounds=rounds, attackers=1, attack="scaling", seed=0)
    names = ["alice", "bob", "carol", "mallory"]
    plans = [
        MemberPlan(
            name,
            data=DIGITS_4 / f"member-{i + 1:02d}.csv",
            attack="scaling" if name == "mallory" else None,
            train_seed=subseed(0, f"explorer-{name}"),
        )
        for i, name in enumerate(names)
    ]
    plan = genesis_plan(options)
    if name is not None:
        plan = dataclasses.replace(plan, name=name)
    return LocalConsortium(
        root, plans, plan, passphrase=PASSPHRASE, genesis_time_ms=genesis_time_ms
    )


@pytest.fixture
def running(tmp_path: Path) -> Iterator[LocalConsortium]:
    if CHROMIUM is None:
        pytest.skip(
            "chromium is not installed (apt-get install -y chromium; make test does as root)"
        )
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
    # a consortium name written as markup: the page must show it as the characters it is
    consortium = explorer_consortium(tmp_path, name=HOSTILE_NAME)
    try:
        consortium.start_all(timeout=120.0)
        yield consortium
    finally:
        consortium.close()


@pytest.mark.timeout(300)
def test_the_explorer_shows_rounds_rejections_and_block_links(running: LocalConsortium) -> None:
    from playwright.sync_api import expect, sync_playwright

    url = running.members["alice"].url
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page()
            page.on(
                "request",
                lambda r: outside.append(r.url) if not r.url.startswith(url) else None,
            )
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/explorer/")
            expect(page.locator("h1")).to_contain_text("bcfl explorer")
            expect(page.locator("#live")).to_contain_text("live", timeout=WAIT_MS)
            expect(page.locator("table caption", has_text="Members")).to_be_visible()
            expect(page.locator("#consortium")).to_contain_text(HOSTILE_NAME)
            assert page.locator("img").count() == 0 and page.title() == "bcfl chain explorer"
            # rounds appear as they close, on the same page (the poll, not a reload)
            for number in (1, 2):
                closed = page.locator(f'#rounds tr[data-round="{number}"][data-state="closed"]')
                expect(closed).to_have_count(1, timeout=WAIT_MS)
            # the rejected update, with its reason, on its round's page
            page.get_by_role("link", name="round 1", exact=True).first.click()
            rejected = page.locator('#updates tr[data-verdict="reject"]')
            expect(rejected).to_have_count(1, timeout=WAIT_MS)
            expect(rejected).to_contain_text("mallory")
            expect(rejected).to_contain_text("norm_exceeded")
            expect(page.locator('#updates tr[data-verdict="accept"]')).to_have_count(3)
            proof_link = page.get_by_role("link", name="Download the proof of round 1")
            expect(proof_link).to_be_visible()
            # the real node builds it (in a spawned process) and serves the gzip bundle
            proof = page.request.get(url + str(proof_link.get_attribute("href")), timeout=WAIT_MS)
            assert proof.status == 200 and proof.body()[:2] == b"\x1f\x8b", proof.status
            # a block links to its transactions, and a transaction back to its block
            rejected.locator("td").nth(2).get_by_role("link").click()
            txs = page.locator("#txs tbody tr")
            expect(page.locator("h2")).to_contain_text("Block")
            expect(page.locator("#txs")).to_contain_text("update")
            expect(page.locator("#txs")).to_contain_text("validation")
            assert txs.count() >= 2
            update_row = page.locator('#txs tr[data-kind="update"]', has_text="mallory")
            update_row.get_by_role("link").click()
            expect(page.locator("#tx")).to_contain_text("update")
            expect(page.locator("#tx")).to_contain_text("committed")
            expect(page.locator("#tx-body")).to_contain_text('"round": 1')
            # keyboard: the first stop is the skip link, which moves focus to the content, and
            # the next ones are the views' links
            page.goto(url + "/explorer/")
            expect(page.locator("#rounds")).to_be_visible(timeout=WAIT_MS)
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.textContent") == "Skip to content"
            page.keyboard.press("Enter")
            assert page.evaluate("document.activeElement.id") == "main"
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.tagName") == "A"
            assert not errors, errors
        finally:
            browser.close()
    assert not outside, f"the page loaded from elsewhere: {outside[:3]}"
