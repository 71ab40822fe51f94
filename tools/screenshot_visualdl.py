"""Screenshot a running VisualDL page in headless Chromium (how docs/visualdl.png of docs/training.md is made).

    visualdl --logdir results/vdl --host 127.0.0.1 --port 8040 --language en &
    python tools/screenshot_visualdl.py --url http://127.0.0.1:8040/app/scalar --out docs/visualdl.png --zoom 0.75

Needs the `playwright` Python package (pip install playwright; no browser download: it drives an
installed Chromium, e.g. Debian's `apt-get install chromium`, given by --chromium).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from screenshot_web_demo import add_page_args, screenshot  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_page_args(p, "http://127.0.0.1:8040/app/scalar", "docs/visualdl.png", 900)
    p.add_argument("--wait", type=float, default=20.0, help="seconds to let the charts load and draw")
    p.add_argument("--zoom", type=float, default=1.0, help="page zoom, e.g. 0.5 to show more sections at once")
    args = p.parse_args(argv)

    def show(page, timeout_ms):
        page.evaluate(f"document.body.style.zoom = '{args.zoom}'")
        page.wait_for_timeout(args.wait * 1000)  # the charts load one by one and animate in

    # the page keeps polling for new records: it never goes network-idle
    return screenshot(args, show, full_page=False, wait_until="load")


if __name__ == "__main__":
    sys.exit(main())
