"""Screenshots of the chain explorer for README.md, taken as the browser test drives it.

Usage::

    .venv/bin/python bench/explorer_screenshots.py [--out docs/images]

Starts the browser test's consortium (four ``bcfl node`` processes on 127.0.0.1, a ``scaling``
attacker among them), lets its three rounds close, and saves the overview, a round with the
rejected update, a block and a transaction as PNGs, with Debian's ``chromium`` driven by
Playwright (the system browser; nothing is downloaded). Every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.faults.test_explorer_browser import ROUNDS, explorer_consortium  # noqa: E402

WAIT_MS = 180_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("chromium is not installed (apt-get install -y chromium)", file=sys.stderr)
        return 2
    from playwright.sync_api import expect, sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # a genesis a minute old, so that block times read as today's (an older one makes
        # them catch up by a day a block: PROTOCOL.md's bound on a block's time step)
        now_ms = int(time.time() * 1000)
        consortium = explorer_consortium(Path(tmp), genesis_time_ms=now_ms - 60_000)
        try:
            consortium.start_all(timeout=120.0)
            url = consortium.members["alice"].url + "/explorer/"
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=chromium)
                page = browser.new_page(viewport={"width": 1280, "height": 900})
                page.goto(url)
                last = page.locator(f'#rounds tr[data-round="{ROUNDS}"][data-state="closed"]')
                expect(last).to_have_count(1, timeout=WAIT_MS)
                page.wait_for_timeout(2500)  # the next poll has drawn every closed round
                shots = [("explorer-overview.png", "#/")]
                shots.append(("explorer-round.png", "#/round/1"))
                for name, route in shots:
                    page.goto(url + route)
                    page.wait_for_timeout(1500)
                    page.screenshot(path=str(args.out / name), full_page=True)
                    print(args.out / name)
                page.locator('#updates tr[data-verdict="reject"] td').nth(2).get_by_role(
                    "link"
                ).click()
                expect(page.locator("#txs")).to_be_visible()
                page.screenshot(path=str(args.out / "explorer-block.png"), full_page=True)
                print(args.out / "explorer-block.png")
                browser.close()
        finally:
            consortium.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
