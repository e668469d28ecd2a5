"""The page at `/` in a real browser: headless Chromium (the system package) driven by Playwright.

Extended (a browser start is seconds): CI installs `chromium` with apt; CNNSPEC_CHROMIUM overrides its path.
"""

from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from serve_helpers import Server
from test_serve import LABELS, compile_model, digit_png

pytestmark = pytest.mark.extended


def test_drop_a_digit_and_read_the_top_label(tmp_path):
    from playwright.sync_api import sync_playwright

    model = compile_model(tmp_path)
    image = tmp_path / "one.png"
    image.write_bytes(digit_png(1))
    pixels = np.asarray(Image.open(io.BytesIO(image.read_bytes())), np.float32)[None, None]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    expected = LABELS[int(np.argmax(session.run(["output"], {"input": pixels})[0][0]))]
    srv = Server([str(model)])
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=os.environ.get("CNNSPEC_CHROMIUM", "/usr/bin/chromium"), args=["--no-sandbox"]
            )
            page = browser.new_page()
            page.goto(srv.url + "/")
            page.set_input_files("#file", str(image))
            top = page.locator("td.label[data-rank='0']")
            top.wait_for(timeout=60_000)
            assert top.inner_text() == expected
            assert page.locator("td.label").count() == 5
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
            if os.environ.get("CNNSPEC_SCREENSHOT"):
                page.screenshot(path=os.environ["CNNSPEC_SCREENSHOT"], full_page=True)
            browser.close()
        assert (tmp_path / "page.png").stat().st_size > 1000
    finally:
        assert srv.stop() == 0
