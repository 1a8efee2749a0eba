"""Picture the web demo answering: serve a checkpoint, ask in headless Chromium, save the page as a PNG.

    python demo/screenshot.py --ask "What is the capital of France?" --out demo/screenshots/web.png \\
        --checkpoint runs/language-small --greedy --no_encode_user

Flags it does not know go to ``demo/web.py``, which it runs in a process of its own. It makes the README's
screenshot from a real run rather than by hand. Needs selenium (the test extra) and
Chromium with its driver (Debian: apt-get install chromium chromium-driver).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from demo/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from eval.flags import FlagParser  # noqa: E402

ANSWERED = '.turn.assistant[data-done="true"]'  # an answer the page has finished streaming
WAIT_SECONDS = 600  # an answer of a 135M-parameter model on a CPU takes seconds to a minute


def browser(window: str):
    """Headless Chromium through selenium (imported here: a test extra, needed by this tool alone)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        raise SystemExit("chromium and chromedriver are needed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"):
        options.add_argument(arg)
    options.add_argument("--disable-extensions")
    options.add_argument(f"--window-size={window}")
    os.environ.setdefault("SE_AVOID_STATS", "true")  # selenium's usage statistics: nothing leaves this machine
    return webdriver.Chrome(options=options, service=Service(executable_path=driver))


def picture(url: str, questions: list[str], image: str | None, out: Path, window: str) -> None:
    """Ask ``questions`` on the page at ``url`` (``image`` attached to the first), wait for each answer, save."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser(window)
    try:
        wait = WebDriverWait(page, WAIT_SECONDS)
        page.get(url)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "true")
        for done, question in enumerate(questions, start=1):
            if image is not None and done == 1:
                page.find_element(By.ID, "image").send_keys(str(Path(image).resolve()))
            page.find_element(By.ID, "instruction").send_keys(question)
            page.find_element(By.ID, "send").click()
            wait.until(lambda d, n=done: len(d.find_elements(By.CSS_SELECTOR, ANSWERED)) == n)
        out.parent.mkdir(parents=True, exist_ok=True)
        page.save_screenshot(str(out))
    finally:
        page.quit()


def serve(argv: list[str]) -> tuple[subprocess.Popen, str]:
    """``demo/web.py`` with ``argv`` on a free port, in a process of its own; returns it and the page's address once
    it serves (it prints the address when the model is loaded)."""
    web = Path(__file__).with_name("web.py")
    proc = subprocess.Popen(
        [sys.executable, str(web), *argv, "--port", "0"], stdout=subprocess.PIPE, stderr=sys.stderr, text=True
    )
    for line in proc.stdout:
        found = re.search(r"serving the demo at (http://\S+/)", line)
        if found:
            return proc, found.group(1)
    proc.wait()
    raise SystemExit(f"demo/web.py exited ({proc.returncode}) before serving")


def main(argv: list[str] | None = None) -> int:
    parser = FlagParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ask", action="append", required=True, help="an instruction to send (repeatable)")
    parser.add_argument("--image", default=None, help="an image to attach to the first instruction")
    parser.add_argument("--out", default="demo/screenshots/web.png", help="the PNG to write")
    parser.add_argument("--window", default="1100,720", help="the browser window's width,height")
    args, web_args = parser.parse_known_args(argv)
    proc, url = serve(web_args)
    try:
        picture(url, args.ask, args.image, Path(args.out), args.window)
    finally:
        proc.terminate()
        proc.wait()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
