"""Run `python -m finetune.train ARGS` many times in one process (Hydra + validation + train()'s start),
for CLI tests that must not pay a TensorFlow import per case. Used by tests/test_faults.py.

    python tests/cli_inprocess.py CASES.json  ->  prints one JSON line: [{"code": int, "stderr": str}, ...]

A case is {"argv": [...], "fail_at": "work" | "enospc" | null}: "work" makes the first step after the
run-folder lock (the tokenizer) raise AssertionError, so reaching it is a failure (a traceback, code 1);
"enospc" makes it raise OSError(ENOSPC) naming a file whose name holds a newline.
"""

import contextlib
import errno
import io
import json
import os
import sys


def main(cases_file: str) -> None:
    from hydra.core.global_hydra import GlobalHydra

    import finetune.train as entry
    import finetune.training.run as run
    from finetune.cli import run_cli

    entry.main.__wrapped__.__module__ = "__main__"  # Hydra finds configs/ beside the file, as with python -m
    real = run.make_tokenizer
    results = []
    for case in json.loads(open(cases_file).read()):
        def fail(*a, _how=case.get("fail_at"), **k):
            if _how == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/bad\nerror: fake.png")
            raise AssertionError("work started")

        run.make_tokenizer = fail if case.get("fail_at") else real
        GlobalHydra.instance().clear()
        sys.argv = ["finetune.train", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled", *case["argv"]]
        err = io.StringIO()
        code = 0
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                run_cli(entry.main)
            except SystemExit as e:
                code = e.code
            except BaseException as e:  # noqa: BLE001 - a traceback is what the tests look for
                code, _ = 1, err.write(f"Traceback: {type(e).__name__}: {e}\n")
        results.append({"code": code, "stderr": err.getvalue()})
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
