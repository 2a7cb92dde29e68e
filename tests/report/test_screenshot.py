"""The report renders in a real browser: headless Chromium screenshots show the embedded plots.

Skipped where /usr/bin/chromium is absent (CI images without a browser); locally: apt-get install -y chromium.
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from preflab.report.html import write_report

sys.path.insert(0, str(Path(__file__).parent))
from report_runs import make_run  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs headless Chromium at /usr/bin/chromium "
                                                               "(apt-get install -y chromium); not in this image")
PLOT_BLUE = (0x1F, 0x77, 0xB4)     # chosen / loss lines and the eval.json histogram


def screenshot(html_path: Path, png: Path, tmp_path: Path, height: int = 2600) -> Path:
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", f"--screenshot={png}", f"--window-size=1280,{height}",
           html_path.resolve().as_uri()]
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert png.is_file(), "Chromium wrote no screenshot"
    return png


def blue_pixels(png: Path) -> int:
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.int16)
    return int((np.abs(rgb - np.array(PLOT_BLUE, dtype=np.int16)) <= 40).all(-1).sum())


def test_chromium_renders_the_plots(tmp_path):
    run = make_run(tmp_path / "run", margins=True, eval_json=True)
    report = write_report([run], tmp_path / "report.html", title="screenshot test")
    # control: the same page with every image removed
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'<img src="[^"]*"', '<img src=""', report.read_text()))
    with_plots = blue_pixels(screenshot(report, tmp_path / "report.png", tmp_path))
    without = blue_pixels(screenshot(bare, tmp_path / "bare.png", tmp_path))
    assert without < 100            # text, borders and note boxes are not plot-blue (measured: 0)
    assert with_plots > 1000, (with_plots, without)          # measured: ~3500 (lines and the histogram)
