"""Runs survive every fault (issue 15): killed at any write and resumed, damaged checkpoints, a locked
run folder, hostile config values, a full disk.

The kill-point test runs `python -m finetune.train` with FINETUNE_KILL_AT=<point> (finetune.io.fault_point:
SIGKILL when the run gets there), then again with trainer.resume=auto, along a chain of points, and compares
the end with one uninterrupted run, bitwise. CI runs a short chain; FINETUNE_KILL_ALL=1 runs every point.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import CONCEPT, ROOT

RUN = (
    "model=tiny", f"data.concept_dir={CONCEPT}", "trainer.batch_size=2", "eval.enabled=false",
    "trainer.max_steps=4", "trainer.checkpoint_every=2", "data.crops_per_image=1", "export.formats=[diffusers,kohya]",
    "trainer.resume=auto",
)
TIMING_KEYS = {"train_seconds", "wall_seconds", "resumed_from_step", "validation_seconds", "score_seconds"}
OUTPUTS = ("learned_embeds.safetensors", "learned_embeds-steps-2.safetensors", "learned_embeds-steps-4.safetensors",
           "export/kohya/red-checkered-heart.safetensors", "metrics.json", "loss.png", "embedding_norm.png", "report.html",
           "checkpoints/step-000002/state.safetensors", "checkpoints/step-000004/meta.json")

# (kill point, what is done to the run folder before it is resumed)
SHORT_CHAIN = [
    # Killed with every checkpoint and the final embedding written, metrics.json half-written (a temp file);
    # then the newest checkpoint is damaged (one flipped bit): the resume falls back to step 2 with one
    # warning, trains steps 3-4 again and rewrites every output.
    ("before-rename:metrics.json", "damage-newest"),
]
FULL_CHAIN = [
    ("dataset:00000-02-*", None), ("latents", None), ("step:1", None), ("before-rename:state.safetensors", None),
    ("checkpoint:2", None), ("checkpoint-done:2", None), ("before-rename:learned_embeds-steps-2.safetensors", None),
    ("rename:learned_embeds-steps-2.safetensors", None), ("step:3", None), ("checkpoint-done:4", "damage-newest"),
    ("before-rename:learned_embeds-steps-4.safetensors", None), ("before-rename:learned_embeds.safetensors", None),
    ("rename:learned_embeds.safetensors", None), ("before-rename:red-checkered-heart.safetensors", None),
    ("before-rename:metrics.json", None), ("rename:metrics.json", None), ("before-rename:loss.png", None),
    ("before-rename:report.html", None), ("rename:report.html", None),
]


def train_cli(run_dir: Path, *extra: str, kill_at: str | None = None, timeout: int = 300):
    env = {k: v for k, v in os.environ.items() if k != "FINETUNE_KILL_AT"}
    if kill_at:
        env["FINETUNE_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, "-m", "finetune.train", *RUN, *extra, f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    out = train_cli(run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    return run_dir


def temp_files(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.name.startswith(".tmp-") or (p.name.startswith(".") and p.name.endswith(".tmp")))


def damage_newest(run_dir: Path) -> str:
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    state = newest / "state.safetensors"
    data = bytearray(state.read_bytes())
    data[-3] ^= 0x01  # one flipped bit in the data region: only the checksum can tell
    state.write_bytes(bytes(data))
    return newest.name


def kohya_without_date(run_dir: Path) -> tuple[dict, bytes]:
    from safetensors import safe_open

    with safe_open(str(run_dir / "export" / "kohya" / "red-checkered-heart.safetensors"), "np") as f:
        metadata = {k: v for k, v in (f.metadata() or {}).items() if k != "modelspec.date"}
        return metadata, f.get_tensor("emb_params").tobytes()


def metrics_without_timing(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k not in TIMING_KEYS}


def run_chain(chain, reference: Path, run_dir: Path) -> list[str]:
    notes, damaged = [], None
    for point, action in [*chain, (None, None)]:
        out = train_cli(run_dir, kill_at=point)
        text = out.stdout + out.stderr
        if damaged:  # this run resumed past a damaged newest checkpoint
            warnings = [ln for ln in text.splitlines() if "skipped checkpoint" in ln]
            assert len(warnings) == 1 and damaged in warnings[0] and "sha256" in warnings[0], text[-3000:]
            assert "step-000002 at step 2" in text, text[-3000:]  # resumed from the older, intact one
            damaged = None
        if point is None:
            break
        assert out.returncode == -9, f"{point}: not killed (rc {out.returncode}): {out.stderr[-2000:]}"
        notes.append(f"{point}: killed, temp files {temp_files(run_dir)}")
        if action == "damage-newest":
            damaged = damage_newest(run_dir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert temp_files(run_dir) == []
    assert [f for f in OUTPUTS if not (run_dir / f).is_file()] == []
    for name in ("learned_embeds.safetensors", "learned_embeds-steps-4.safetensors"):
        assert (run_dir / name).read_bytes() == (reference / name).read_bytes(), name
    # kohya's ModelSpec metadata holds the file's creation time (modelspec.date): all else is the same
    assert kohya_without_date(run_dir) == kohya_without_date(reference)
    assert metrics_without_timing(run_dir) == metrics_without_timing(reference)
    return notes


def test_killed_anywhere_then_resumed_equals_the_uninterrupted_run(reference, tmp_path):
    run_chain(SHORT_CHAIN, reference, tmp_path / "run")


@pytest.mark.skipif(not os.environ.get("FINETUNE_KILL_ALL"), reason="every kill point: FINETUNE_KILL_ALL=1 (~10 min)")
def test_every_kill_point(reference, tmp_path):
    notes = run_chain(FULL_CHAIN, reference, tmp_path / "run")
    print("\n".join(notes))


def test_identical_runs_write_identical_bytes(reference, tmp_path):
    """The kill chain's final resume rewrote these from a checkpoint; a second fresh run writes them again."""
    from finetune.export.diffusers_format import save_diffusers_embedding

    vectors = np.random.default_rng(0).normal(size=(2, 8)).astype(np.float32)
    a = save_diffusers_embedding(tmp_path / "a.safetensors", "<x>", vectors, {"z": "1", "a": "2", "m": "3"})
    b = save_diffusers_embedding(tmp_path / "b.safetensors", "<x>", vectors, {"m": "3", "a": "2", "z": "1"})
    assert a.read_bytes() == b.read_bytes()


# ----------------------------------------------------------------------------- damaged checkpoints (no training)


def _checkpoints(run_dir: Path, steps=(10, 20)):
    import keras

    from finetune.training.checkpoints import save_checkpoint

    variables = [keras.Variable(np.full((2, 3), float(s), np.float32)) for s in steps]
    for step, var in zip(steps, variables):
        save_checkpoint(run_dir, step, {"learned_vectors": [var]}, {"fingerprint": "fp"}, keep=0)
    return variables


DAMAGE = {
    "truncated": lambda p: (p / "state.safetensors").write_bytes((p / "state.safetensors").read_bytes()[:-7]),
    "zero_bytes": lambda p: (p / "state.safetensors").write_bytes(b""),
    "header_2_62": lambda p: (p / "state.safetensors").write_bytes((2**62).to_bytes(8, "little") + b"{}"),
    "flipped_bit": lambda p: (p / "state.safetensors").write_bytes(
        (lambda b: b[:-1] + bytes([b[-1] ^ 4]))((p / "state.safetensors").read_bytes())),
    "garbage_meta": lambda p: (p / "meta.json").write_bytes(b"\x00{garbage"),
    "meta_list": lambda p: (p / "meta.json").write_text("[1, 2]"),
    "meta_step_string": lambda p: (p / "meta.json").write_text('{"step": "20", "fingerprint": "fp"}'),
    "deep_meta": lambda p: (p / "meta.json").write_text("[" * 100_000 + "]" * 100_000),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_with_one_warning(tmp_path, caplog, damage):
    import keras

    from finetune.training.checkpoints import find_resume_checkpoint, restore_checkpoint

    run_dir = tmp_path / "runs" / "b"
    _checkpoints(run_dir)
    DAMAGE[damage](run_dir / "checkpoints" / "step-000020")
    sibling = tmp_path / "runs" / "a" / "checkpoints" / "step-000030"  # a sibling's corrupt meta breaks nothing
    sibling.mkdir(parents=True)
    (sibling / "meta.json").write_text("{not json")
    (sibling / "state.safetensors").write_bytes(b"")
    caplog.set_level("WARNING")
    found = find_resume_checkpoint("auto", run_dir, "fp")
    assert found == run_dir / "checkpoints" / "step-000010"
    lines = [r.getMessage() for r in caplog.records if "skipped checkpoint" in r.getMessage()]
    assert len([ln for ln in lines if "step-000020" in ln]) == 1 and all("\n" not in ln for ln in lines)
    target = keras.Variable(np.zeros((2, 3), np.float32))
    assert restore_checkpoint(found, {"learned_vectors": [target]})["step"] == 10
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(target), np.full((2, 3), 10.0))


def test_stale_temp_files_are_removed(tmp_path):
    from finetune.training.checkpoints import remove_stale_temp_files

    (tmp_path / "checkpoints" / ".tmp-step-000030").mkdir(parents=True)
    (tmp_path / ".learned_embeds.safetensors.abc.tmp").write_bytes(b"x")
    (tmp_path / "export" / "kohya").mkdir(parents=True)
    (tmp_path / "export" / "kohya" / ".concept.safetensors.x1.tmp").write_bytes(b"x")
    (tmp_path / ".metrics.json.q.tmp").write_bytes(b"x")
    (tmp_path / "metrics.json").write_text("{}")
    remove_stale_temp_files(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "checkpoints", "export", "export/kohya", "metrics.json"]


# ----------------------------------------------------------------------------- the CLI: config abuse, locks, disk

ABUSE = [
    ("+trainer.foo=1", "trainer.foo"),
    ("trainer.weight_decay=-0.1", "trainer.weight_decay"),
    ("trainer.max_grad_norm=-1", "trainer.max_grad_norm"),
    ("eval.eta=5", "eval.eta"),
    ("eval.prompts=[a photo of a cat]", "eval.prompts"),
    ("trainer.learning_rate=nan", "trainer.learning_rate"),
    ("trainer.learning_rate=inf", "trainer.learning_rate"),
    ("eval.guidance_scale=-3", "eval.guidance_scale"),
    ("eval.num_steps=0", "eval.num_steps"),
    ("token.placeholder='<a>b c'", "token.placeholder"),
    ("token.num_vectors=1000", "token.num_vectors"),
    ("trainer.max_steps=0", "trainer.max_steps"),
    ("trainer.adam_beta2=1", "trainer.adam_beta2"),
    ("trainer.lr_schedule=wavy", "trainer.lr_schedule"),
    ("data.resolution=-64", "data.resolution"),
    ("seed=-1", "seed"),
    ("+eval.foo.bar=1", "eval.foo"),
]


def run_cli_cases(cases: list[dict], tmp_path: Path) -> list[dict]:
    """`python -m finetune.train` once per case, all in one child process (tests/cli_inprocess.py)."""
    cases_file = tmp_path / "cases.json"
    cases_file.write_text(json.dumps(cases))
    out = subprocess.run([sys.executable, str(ROOT / "tests" / "cli_inprocess.py"), str(cases_file)], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def abuse_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("abuse")
    cases = [{"argv": [override, f"hydra.run.dir={tmp / str(i)}"], "fail_at": "work"} for i, (override, _) in enumerate(ABUSE)]
    return tmp, run_cli_cases(cases, tmp)


@pytest.mark.parametrize("row", range(len(ABUSE)), ids=[o for o, _ in ABUSE])
def test_config_abuse_is_one_line_before_any_work(abuse_results, row):
    tmp, results = abuse_results
    key, result = ABUSE[row][1], results[row]
    lines = [ln for ln in result["stderr"].splitlines() if ln.strip()]
    assert result["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0], result
    assert not (tmp / str(row)).exists()  # nothing made


def test_prompt_without_placeholder_can_be_opted_in():
    from conftest import compose_train

    from finetune.validation import validate_train_config

    validate_train_config(compose_train("eval.prompts=[a photo of a cat]", "eval.require_placeholder=false"))


def test_locked_folder_and_os_errors_are_one_line(tmp_path):
    """A second run into a locked folder: one line, the first run's files untouched, no work done.
    An OSError (ENOSPC) in a stage: one line with the file name escaped, exit 2."""
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from finetune.io import lock_run_folder; "
         f"lock_run_folder({str(run_dir)!r}); print('locked', flush=True); time.sleep(300)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (run_dir / "metrics.json").write_text("{}")  # the first run's file
        locked, enospc = run_cli_cases([
            {"argv": [*RUN, f"hydra.run.dir={run_dir}"], "fail_at": "work"},
            {"argv": [*RUN, f"hydra.run.dir={tmp_path / 'other'}"], "fail_at": "enospc"},
        ], tmp_path)
        assert (run_dir / "metrics.json").read_text() == "{}"
    finally:
        holder.kill()
        holder.wait()
    lines = locked["stderr"].splitlines()
    assert locked["code"] == 2 and len(lines) == 1 and f"in use by a running job (pid {holder.pid})" in lines[0], locked
    lines = enospc["stderr"].splitlines()
    assert enospc["code"] == 2 and len(lines) == 1 and lines[0].startswith("error: No space left on device"), enospc
    assert "bad\\nerror: fake.png" in lines[0]
    assert not (tmp_path / "other").exists()  # a run that failed before any result leaves no folder


def test_two_default_runs_in_one_second_get_two_folders():
    script = ("from finetune.config import register_schemas; register_schemas()\n"
              "from hydra import compose, initialize_config_dir\n"
              "from finetune.config import CONFIGS_DIR\n"
              "from hydra.core.hydra_config import HydraConfig\n"
              "with initialize_config_dir(config_dir=str(CONFIGS_DIR), version_base='1.3'):\n"
              "    cfg = compose('train', return_hydra_config=True)\n"
              "    HydraConfig.instance().set_config(cfg)\n"
              "    print(cfg.hydra.run.dir)\n")
    procs = [subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    dirs = [p.communicate(timeout=120)[0].strip().splitlines()[-1] for p in procs]
    assert all(re.fullmatch(r"outputs/tiny/\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d-\d{6}", d) for d in dirs), dirs
    assert dirs[0] != dirs[1]


@pytest.mark.parametrize("size", ["96k", "440k"])  # full while tfds writes the dataset; full at the report
def test_full_disk_during_a_run(tmp_path, size):
    """A real full disk (a small tmpfs): one error line, exit 2, nothing under a final name half-written,
    no log line claiming a file that is not there."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({made.stderr.decode(errors='replace').strip()[:100]})")
    try:
        out = train_cli(mount / "run", "trainer.max_steps=2", "trainer.checkpoint_every=1", "export.formats=[diffusers]")
        text = out.stdout + out.stderr
        errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
        assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in text, text[-3000:]
        assert "room" in errors[0] or "space" in errors[0], errors
        run = mount / "run"
        from finetune.safefiles import ALL_DTYPES, SafetensorsReader

        for f in run.rglob("*.safetensors") if run.exists() else []:
            SafetensorsReader(f, dtypes=ALL_DTYPES).read_all()  # every file under a final name is whole
        if "report:" in text:
            assert (run / "report.html").is_file()
        print(size, errors[0][:200])
    finally:
        subprocess.run(["umount", str(mount)], capture_output=True)


# ----------------------------------------------------------------------------- the concept folder


def test_concept_reader_lists_what_it_skipped(tmp_path, caplog):
    from PIL import Image

    from finetune.data.images import find_images

    folder = tmp_path / "concept"
    folder.mkdir()
    Image.new("RGB", (16, 16), "red").save(folder / "a.png")
    (folder / "folder.png").mkdir()
    (folder / "dangling.png").symlink_to(tmp_path / "missing.png")
    (folder / "loop.png").symlink_to(folder / "loop.png")
    (folder / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(folder / "fifo.png")
    (folder / "notes.doc").write_text("x")
    (folder / "a.txt").write_text("on a sofa")
    caplog.set_level("WARNING")
    assert [p.name for p in find_images(folder)] == ["a.png"]
    lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(lines) == 1
    for entry in ("folder.png (a folder)", "dangling.png (dangling link)", "loop.png (", "zero.png (not a regular file)",
                  "fifo.png (not a regular file)", "notes.doc ("):
        assert entry in lines[0], lines[0]
    assert "a.txt" not in lines[0]


def test_huge_caption_sidecar_is_refused_unread(tmp_path):
    from finetune.data.templates import read_sidecar
    from finetune.errors import DataError

    (tmp_path / "x.txt").write_bytes(b"word " * 4_000_000)  # 20 MB
    with pytest.raises(DataError, match="token.truncate_long_prompts"):
        read_sidecar(tmp_path / "x.png")


def test_temp_files_of_a_live_run_are_left_alone(tmp_path):
    from finetune.training.checkpoints import remove_stale_temp_files

    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from finetune.io import lock_run_folder; "
         f"lock_run_folder({str(tmp_path)!r}); print('locked', flush=True); time.sleep(300)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        (tmp_path / ".metrics.json.abc.tmp").write_bytes(b"x")
        assert remove_stale_temp_files(tmp_path) == []
        assert (tmp_path / ".metrics.json.abc.tmp").exists()
    finally:
        holder.kill()
        holder.wait()
    assert remove_stale_temp_files(tmp_path) == [tmp_path / ".metrics.json.abc.tmp"]
