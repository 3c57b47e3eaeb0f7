"""What every command-line entry point shares: quiet logs, one-line errors, no half-made run folders."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path

from finetune.errors import FinetuneError

# Files Hydra writes into every run folder before the job does anything.
_BOOKKEEPING = {".hydra", "train.log", "evaluate.log", "generate.log", ".lock"}


def quiet_frameworks(verbose: bool) -> None:
    """TensorFlow, absl and friends print pages of notices; keep them unless verbose."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore")
    for name in ("tensorflow", "absl", "h5py", "tensorflow_datasets", "jax", "wandb", "matplotlib"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import tensorflow_datasets as tfds

    tfds.display_progress_bar(False)


def describe_path(path) -> str:
    from finetune.safefiles import describe_path as describe

    return describe(path)


def remove_if_empty_run(run_dir: Path) -> None:
    """A run that failed before writing any result leaves nothing behind."""
    run_dir = Path(run_dir)
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= _BOOKKEEPING | {"tfds"}:
        shutil.rmtree(run_dir, ignore_errors=True)


@contextmanager
def job_guard(run_dir: Path):
    """Wrap the work of a Hydra job: on any failure, remove the run folder if it holds no result.

    A user error exits right here with its one line: raised further, Hydra's job runner
    would first print its own "Error executing job with overrides: [...]" line.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        yield
    except FinetuneError as e:
        from finetune.io import RunFolderLocked

        if not isinstance(e, RunFolderLocked):  # the folder is another live run's: leave it alone
            remove_if_empty_run(run_dir)
        fail(str(e))
    except OSError as e:  # a full disk or a read-only folder in any stage: one line, not a traceback
        remove_if_empty_run(run_dir)
        fail(f"{e.strerror or e}{f': {describe_path(e.filename)}' if e.filename else ''}; check the disk has room "
              "and the folder is writable")
    except (HydraException, OmegaConfBaseException) as e:
        remove_if_empty_run(run_dir)
        fail(_one_line_config_error(e))
    except BaseException:
        remove_if_empty_run(run_dir)
        raise


def import_tensorflow_silently() -> None:
    """TF 2.21 prints absl/oneDNN/CUDA notices from C++ at import, whatever TF_CPP_MIN_LOG_LEVEL says."""
    devnull, saved = os.open(os.devnull, os.O_WRONLY), os.dup(2)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def run_cli(hydra_main) -> None:
    """Call a @hydra.main function; user errors become one line on stderr and exit code 2."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "verbose=true" not in sys.argv and not _answers_without_running(sys.argv[1:]):
        import_tensorflow_silently()
    os.environ["HYDRA_FULL_ERROR"] = "1"  # let errors reach us instead of Hydra's multi-line report
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        hydra_main()
    except FinetuneError as e:
        fail(str(e))
    except (HydraException, OmegaConfBaseException) as e:
        fail(_one_line_config_error(e))


def _answers_without_running(args: list[str]) -> bool:
    """--help, --hydra-help, -sc/--shell-completion (tab completion), --info: Hydra answers, no job runs."""
    return any(a in ("-h", "--help", "--hydra-help", "-sc", "--shell-completion", "-i", "--info") for a in args)


def _one_line_config_error(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    key = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("full_key:")), None)
    first = lines[0] if lines else type(e).__name__
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        cause_first = str(cause).strip().splitlines()[0]
        key = key or next(
            (ln.split(":", 1)[1].strip() for ln in str(cause).splitlines() if ln.strip().startswith("full_key:")), None
        )
        if cause_first not in first:
            first = f"{first} {cause_first}"
    return f"config error: {first}" + (f" (key: {key})" if key and key not in first else "")


def fail(message: str) -> None:
    message = " ".join(str(message).splitlines())  # one line, whatever a file name holds
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


_fail, _import_tensorflow_silently = fail, import_tensorflow_silently  # the old private names
