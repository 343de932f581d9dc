"""What every stage shares: its params as dvc.yaml declares them, the active world, pinned threads,
and one clear line instead of a traceback for errors a user can fix.

A stage is thin: `open_stage`, call one library function, write outputs, log to MLflow.
"""

from __future__ import annotations

import sys

from groundiff.app.hints import error_message, file_errors
from groundiff.core.dvcfile import declared_params
from groundiff.core.errors import ParamsError, WorldError
from groundiff.core.params import Params, load_params
from groundiff.core.paths import DVC_YAML, PARAMS
from groundiff.worlds.active import World, check


def open_stage(name: str) -> tuple[Params, World]:
    """Stage `name`'s params (every section validated; only the keys dvc.yaml declares for it readable),
    its world (checked), and torch's CPU threads pinned as `world.num_threads` says."""
    declared = declared_params(name, DVC_YAML, load_params(PARAMS))
    params = Params.for_stage(name, declared, PARAMS)
    check(params)
    pin_threads(params)
    return params, World(params)


def pin_threads(params: Params) -> None:
    """Set torch's CPU threads for this stage process to `world.num_threads` (0: leave torch's default)."""
    threads = params.world.num_threads
    if threads:
        import torch

        torch.set_num_threads(threads)


def run_stage(main_fn) -> None:
    """Run a stage's main; expected user errors print one clear line instead of a traceback."""
    try:
        main_fn()
    except Exception as err:
        if not isinstance(err, _user_errors()):
            raise
        print(f"error: {error_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None


def _user_errors() -> tuple[type[Exception], ...]:
    """Bad params, damaged input files, or a file system that refuses a write: the message says what to
    fix, a traceback would not help."""
    return (ParamsError, WorldError, ValueError, OSError, *file_errors())
