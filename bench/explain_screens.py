#!/usr/bin/env python3
"""The pictures of the README's explanation section, made again from a model:

- docs/explain-terminal.png: `emotune predict --explain` on a terminal (run under `script`, so
  that it sees one), its ANSI colours drawn as HTML and photographed by headless Chromium;
- docs/explain-page.png: the server's page after "Why?" on the first text, through chromedriver.

    python bench/explain_screens.py --model DIR "text one" "text two" ...

Needs Debian's chromium and chromium-driver (scripts/test installs them) and `script` (util-linux).
"""

import argparse
import base64
import html
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage"]


def terminal_output(args):
    cmd = [args.emotune, "predict", "--model", args.model, "--explain", *args.texts]
    line = " ".join("'" + c.replace("'", "'\\''") + "'" for c in cmd)
    line += " 2>/dev/null"
    env = dict(os.environ, COLUMNS="110")
    out = subprocess.run(["script", "-qec", line, "/dev/null"], check=True, stdout=subprocess.PIPE, env=env)
    return out.stdout.decode().replace("\r\n", "\n")


def ansi_to_html(text):
    """The 24-bit backgrounds emotune prints, as spans; every other escape dropped."""
    out, pos, style = [], 0, None
    for m in re.finditer(r"\x1b\[([0-9;]*)m", text):
        out.append(html.escape(text[pos:m.start()]))
        codes = m.group(1).split(";")
        if "48" in codes:
            r, g, b = codes[codes.index("48") + 2:codes.index("48") + 5]
            out.append(f'<span style="background: rgb({r},{g},{b}); color: #000">')
            style = True
        elif style and codes in (["0"], [""]):
            out.append("</span>")
            style = None
        pos = m.end()
    out.append(html.escape(text[pos:]))
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", "".join(out))
    return ("<html><body style='margin:0;background:#fff'><pre style='font: 14px DejaVu Sans Mono, monospace;"
            f"padding: 12px; color:#111'>{text}</pre></body></html>")


def shoot_terminal(args, out_png):
    text = terminal_output(args)
    with tempfile.NamedTemporaryFile("w", suffix=".html", delete=False) as f:
        f.write(ansi_to_html(text))
    lines = text.count("\n") + 1
    subprocess.run([CHROMIUM, *FLAGS, f"--screenshot={out_png}", f"--window-size=1100,{18 * lines + 30}",
                    f"file://{f.name}"], check=True, capture_output=True)
    os.unlink(f.name)
    return text


def wd(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())["value"]


def shoot_page(args, out_png):
    server = subprocess.Popen([args.emotune, "serve", "--model", args.model, "--port", "0"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True)
    url = server.stdout.readline().strip().removeprefix("listening on ")
    driver = subprocess.Popen([DRIVER, "--port=9517"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = "http://127.0.0.1:9517"
    try:
        for _ in range(100):
            try:
                wd(base, "GET", "/status")
                break
            except OSError:
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM, "args": FLAGS + ["--window-size=800,700"]}}}}
        sid = wd(base, "POST", "/session", caps)["sessionId"]
        s = f"/session/{sid}"
        wd(base, "POST", s + "/url", {"url": url + "/"})
        find = lambda css: list(wd(base, "POST", s + "/element", {"using": "css selector", "value": css}).values())[0]
        wd(base, "POST", s + f"/element/{find('#text')}/value", {"text": args.texts[0]})
        wd(base, "POST", s + f"/element/{find('#go')}/click", {})
        wd(base, "POST", s + f"/element/{find('#explain')}/click", {})
        for _ in range(200):
            if wd(base, "POST", s + "/execute/sync", {"script": "return document.querySelectorAll('#why .word').length",
                                                       "args": []}):
                break
            time.sleep(0.1)
        with open(out_png, "wb") as f:
            f.write(base64.b64decode(wd(base, "GET", s + "/screenshot")))
        wd(base, "DELETE", s)
    finally:
        driver.kill()
        server.terminate()
        server.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--emotune", default=os.path.join(ROOT, "target", "release", "emotune"))
    ap.add_argument("--out-dir", default=os.path.join(ROOT, "docs"))
    ap.add_argument("texts", nargs="+")
    args = ap.parse_args()
    text = shoot_terminal(args, os.path.join(args.out_dir, "explain-terminal.png"))
    print(re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text))
    shoot_page(args, os.path.join(args.out_dir, "explain-page.png"))


if __name__ == "__main__":
    main()
