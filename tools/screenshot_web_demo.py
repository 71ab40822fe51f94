"""Screenshot the running web demo in headless Chromium after asking it a question (how the
docs/web_demo.png of docs/predict.md is made).

    python tools/demo_web.py --MODEL=tiny --CKPT_V=demo --CKPT_E=6 --FEATS_DIR=data/vqa/feats/val2014 &
    python tools/screenshot_web_demo.py --url http://127.0.0.1:7860/ --out docs/web_demo.png \
        --image COCO_val2014_000002000027.jpg.npz --question "what is the biggest object?"

Needs the `playwright` Python package (pip install playwright; no browser download: it drives an
installed Chromium, e.g. Debian's `apt-get install chromium`, given by --chromium).
"""
import argparse
import sys

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def add_page_args(p: argparse.ArgumentParser, url: str, out: str, height: int) -> None:
    """The flags of every screenshot: the page, the PNG, the browser and its window."""
    p.add_argument("--url", default=url, help="the page's address")
    p.add_argument("--out", default=out, help="PNG to write")
    p.add_argument("--chromium", default="/usr/bin/chromium", help="Chromium executable")
    p.add_argument("--width", type=int, default=1400, help="window width in pixels")
    p.add_argument("--height", type=int, default=height, help="window height in pixels")
    p.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for the page")


def screenshot(args, act, full_page: bool = True, wait_until: str = "networkidle") -> int:
    """Open args.url in headless Chromium (until its `wait_until` event), run act(page, timeout_ms),
    write args.out."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        print("error: this script needs playwright: pip install playwright (it drives --chromium, "
              "nothing is downloaded).", file=sys.stderr)
        return 2
    timeout_ms = args.timeout * 1000
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(args.url, wait_until=wait_until, timeout=timeout_ms)
            act(page, timeout_ms)
            page.screenshot(path=args.out, full_page=full_page)
        finally:
            browser.close()
    print(f"wrote {args.out}")
    return 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_page_args(p, "http://127.0.0.1:7860/", "docs/web_demo.png", 1000)
    p.add_argument("--image", help="feature file name to pick from the list (default: the page's first)")
    p.add_argument("--question", default="what is the biggest object?", help="question to ask")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def ask(page, timeout_ms):
        if args.image:
            choose = page.get_by_label("image", exact=False).first
            choose.click()
            choose.fill(args.image)
            page.get_by_role("option", name=args.image).click(timeout=timeout_ms)
        page.get_by_label("question").fill(args.question)
        page.get_by_role("button", name="Ask").click()
        # the notes under the answers start with the top answer in bold once the answer is in
        page.locator("#notes strong").first.wait_for(timeout=timeout_ms)
        page.locator("#attention img").first.wait_for(timeout=timeout_ms)
        page.wait_for_load_state("networkidle", timeout=timeout_ms)

    return screenshot(args, ask)


if __name__ == "__main__":
    sys.exit(main())
