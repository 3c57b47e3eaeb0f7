"""What a user sees in a run folder: loss.png, embedding_norm.png, progress.png, report.html (in headless Chromium)."""

import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from finetune.evaluation.grid import make_grid
from finetune.reporting.plots import STOP_COLOR, plot_loss, smooth
from finetune.reporting.progress import MAX_CELLS, evenly_spaced, preview_image, progress_strip
from tests.conftest import needs
from tests.tracked_runs import PREVIEW_STEPS, wandb_run

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
PICTURES = ("loss.png", "embedding_norm.png", "scores.png", "progress.png", "samples/grid.png")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return wandb_run(tmp_path_factory)


def test_run_folder_pictures(run):
    run_dir, metrics = run
    for name in PICTURES:
        with Image.open(run_dir / name) as image:
            assert image.format == "PNG" and min(image.size) >= 200, name
    # progress.png: a title band over one 256 px cell per preview, side by side.
    with Image.open(run_dir / "progress.png") as strip:
        assert strip.width == len(PREVIEW_STEPS) * 256 + (len(PREVIEW_STEPS) - 1) * 4 and strip.height > 256 + 40
    # The embedding history starts at the initial vector: norm as initialized, cosine 1.
    history = metrics["embedding_history"]
    assert history["step"] == [0, 1, 2, 3, 4]
    assert history["norm"][0] == pytest.approx(metrics["initial_vector_norms"])
    assert history["cosine_to_init"][0] == pytest.approx([1.0])


class _Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.sources = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.sources.append(dict(attrs)["src"])


def test_report_is_self_contained_with_config_and_metrics(run):
    run_dir, metrics = run
    page = (run_dir / "report.html").read_text()
    parser = _Images()
    parser.feed(page)
    assert len(parser.sources) == len(PICTURES)
    assert all(src.startswith("data:image/png;base64,") for src in parser.sources)
    assert f"{metrics['final_loss']:.4g}" in page
    assert "<code>logger=wandb</code>" in page  # the overrides
    assert "&lt;red-checkered-heart&gt;" in page and "<red-checkered-heart>" not in page  # escaped
    assert "max_steps: 4" in page  # the composed config


def _chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver (.ci/run installs them; tests install nothing)."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        needs("the system packages chromium and chromium-driver (Debian; .ci/run installs them)")
    return found


def test_report_in_headless_chromium(run):
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium, from the test extra: .[test]")
    chromium, chromedriver = _chromium()
    run_dir, _ = run
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1280,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=chromedriver))
    try:
        driver.get((run_dir / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]);")
        assert len(images) == len(PICTURES)
        for alt, complete, width, height in images:
            assert complete and width > 0 and height > 0, f"image {alt!r} did not load"
        height = driver.execute_script("return document.documentElement.scrollHeight;")
        driver.set_window_size(1280, height)
        ARTIFACTS.mkdir(exist_ok=True)
        screenshot = ARTIFACTS / "report.png"
        assert driver.save_screenshot(str(screenshot))
        print(f"report screenshot: {screenshot}")
    finally:
        driver.quit()
    with Image.open(screenshot) as shot:
        assert shot.width >= 1000 and shot.height >= 1500


def test_smooth_is_a_debiased_moving_average():
    assert smooth([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # no pull towards 0 at the start
    values = smooth([0.0, 10.0, np.nan, 10.0], span=3)
    assert values[0] == 0.0 and 0.0 < values[1] < 10.0 and values[2] == values[1] and values[1] < values[3] < 10.0


def test_loss_plot_shades_early_stoppings_cooldown(tmp_path):
    steps = list(range(1, 241))
    history = {"step": steps, "loss": [0.05 + 0.01 * np.sin(s) for s in steps],
               "lr": [5e-3 * min(1.0, (230 - s) / 100) for s in steps]}
    validation = {"step": list(range(10, 241, 10)), "loss": [0.04 - 0.0001 * s for s in range(24)]}
    tint = np.array([int(STOP_COLOR[i:i + 2], 16) for i in (1, 3, 5)]) * 0.12 + 255 * 0.88  # the span on white

    def tinted_columns(stop):
        pixels = np.asarray(Image.open(plot_loss(history, tmp_path / "loss.png", validation, stop)).convert("RGB"), float)
        return np.flatnonzero((np.abs(pixels - tint).max(axis=-1) <= 3).sum(axis=0) >= 100)  # tinted top to bottom

    assert len(tinted_columns(None)) == 0 and len(tinted_columns((130, 130))) == 0  # no cooldown: no span
    columns = tinted_columns((130, 230))
    plain = np.asarray(Image.open(plot_loss(history, tmp_path / "loss.png", validation)).convert("RGB"))
    assert plain.shape[1] * 0.2 < columns.max() - columns.min() < plain.shape[1] * 0.45  # 100 of 240 steps of the axes


def test_progress_strip_from_preview_files(tmp_path):
    previews = tmp_path / "previews"
    previews.mkdir()
    for step in (10, 20, 100):  # as run.py writes them: a one-cell labelled grid, 64 px upscaled to 256
        pixels = np.full((64, 64, 3), step, np.uint8)
        make_grid([pixels], [f"step {step}: a photo of <x> (seed 0)"]).save(previews / f"step-{step:06d}.png")
        assert np.all(preview_image(previews / f"step-{step:06d}.png") == step)
    strip = progress_strip(previews, "a photo of <x> (seed 0) during training")
    assert strip.width == 3 * 256 + 2 * 4
    assert progress_strip(tmp_path / "none", "title") is None
    picked = evenly_spaced(list(range(100)), MAX_CELLS)
    assert len(picked) == MAX_CELLS and picked[0] == 0 and picked[-1] == 99


def test_report_lists_files_with_relative_links(run):
    run_dir, _ = run
    links = re.findall(r'<a href="([^"]+)"', (run_dir / "report.html").read_text())
    assert "learned_embeds.safetensors" in links and "metrics.json" in links
    assert all((run_dir / link).exists() for link in links)
