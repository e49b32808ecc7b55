"""The compare report in a real browser: headless Chromium renders every image and the results table.

Needs Debian's `chromium` package (`apt-get install chromium`; .ci/run installs it). Without it the
tests fail - they do not skip - so a CI machine without a browser is noticed.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from genlab.compare import run_compare

CHROMIUM_NAMES = ("chromium", "chromium-browser")
MODELS = ["seed-vae", "seed-gan"]
# The injected probe: counts <img> elements and those decoded with a size, and the table's rows.
PROBE = """<script>
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  var rows = Array.prototype.slice.call(document.querySelectorAll("#results tbody tr"));
  var b = document.body;
  b.setAttribute("data-probe-images", String(imgs.length));
  b.setAttribute("data-probe-rendered", String(ok));
  b.setAttribute("data-probe-rows", String(rows.length));
  b.setAttribute("data-probe-models", rows.map(function (r) { return r.cells[0].textContent; }).join(","));
});
</script>"""


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("headless Chromium is not installed: run `apt-get install chromium` (Debian's package; .ci/run "
                "installs it). The report's browser test needs it.")


def run_chromium(tmp_path, *args) -> subprocess.CompletedProcess:
    cmd = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "genlab-cache"  # shared with test_compare: one digits evaluator
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GENLAB_CACHE", str(cache))
        res = run_compare(MODELS, "digits", "2ep", samples=500, out_root=tmp_path_factory.mktemp("browser"),
                          progress=False, log=lambda _msg: None)
    return res.report_path


def test_the_report_renders_as_a_full_page(report, tmp_path):
    shot = tmp_path / "report.png"
    run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", "--hide-scrollbars",
                 "--virtual-time-budget=3000", report.resolve().as_uri())
    img = Image.open(shot).convert("RGB")
    assert img.size == (1200, 3000)
    pixels = np.asarray(img)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 200, f"only {colours} distinct colours: the page looks blank"
    assert pixels.std() > 20
    # not just the top: the lower part of the page (model sections with their pictures) is drawn too
    assert pixels[1500:].std() > 20


def test_every_image_and_every_table_row_renders(report, tmp_path):
    page = report.read_text()
    expected_images = len(re.findall(r"<img\b", page))
    # per model: samples, interpolation, curves, nearest images, one grid per epoch (2); the VAE: reconstructions
    assert expected_images == 2 * (4 + 2) + 1
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", PROBE + "</body>"))
    dom = run_chromium(tmp_path, "--virtual-time-budget=3000", "--dump-dom", probe.resolve().as_uri()).stdout
    body = re.search(r"<body[^>]*>", dom)
    assert body, dom[:500]
    attrs = dict(re.findall(r'data-probe-([a-z]+)="([^"]*)"', body.group(0)))
    assert attrs, f"the probe did not run: {body.group(0)}"
    assert int(attrs["images"]) == expected_images
    assert int(attrs["rendered"]) == expected_images, f"{attrs['rendered']} of {expected_images} images rendered"
    assert int(attrs["rows"]) == len(MODELS)
    assert attrs["models"].split(",") == MODELS
    assert "<th>FID &#8595;</th>" in dom or "FID ↓" in dom
