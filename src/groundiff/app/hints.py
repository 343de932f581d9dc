"""Which `dvc repro` remakes a missing or damaged input: read from dvc.yaml, not written into the library.

The library's errors name the file that is missing or damaged; the application edge (a stage's
`run_stage`, the command line) appends the command that makes it, found among dvc.yaml's outs.
"""

from __future__ import annotations

import re
from pathlib import Path

from groundiff.core.paths import DVC_YAML, PARAMS


def producing_stage(message: str, dvc_yaml: Path = DVC_YAML) -> str | None:
    """The dvc.yaml stage whose output the message names (the longest output path it contains), or None."""
    try:
        import yaml

        from groundiff.core.dvcfile import read_stages

        params = yaml.safe_load(PARAMS.read_text()) if PARAMS.is_file() else {}
        stages = read_stages(dvc_yaml, params)
    except Exception:  # no dvc.yaml here, or params too broken to fill its templates: no hint
        return None
    outs = sorted(((out.rstrip("/"), name) for name, stage in stages.items() for out in stage.outs),
                  key=lambda pair: -len(pair[0]))
    for out, name in outs:  # the output as a whole path: models/grounding is not in models/grounding-official
        if re.search(rf"(?<![\w.-]){re.escape(out)}(?![\w.-])", message):
            return name
    return None


def file_errors() -> tuple[type[Exception], ...]:
    """Missing or damaged input files: the errors a remake hint belongs to."""
    from groundiff.core.checkpoint import CheckpointError  # imported only once something failed (torch)
    from groundiff.data.shards import ShardError

    return (FileNotFoundError, ShardError, CheckpointError)


def error_message(err: Exception) -> str:
    """The one line a user reads for an error they can fix: a file error also names its remake; a
    file-system failure (a path that cannot be written or removed) says where and what to check."""
    if isinstance(err, file_errors()):
        return with_remake_hint(str(err))
    if isinstance(err, OSError) and err.errno is not None:  # raised by the system, not with our own message
        where = " -> ".join(str(f) for f in (err.filename, err.filename2) if f) or "a file"
        return (f"{where}: {err.strerror or err}; could not write or remove it: check that the path is a "
                "folder (not a file) you can write to and that the disk has room")
    return str(err)


def with_remake_hint(message: str, dvc_yaml: Path = DVC_YAML) -> str:
    """`message`, plus "; run `dvc repro <stage>`" when it names an output of a dvc.yaml stage."""
    if "dvc repro" in message:
        return message
    stage = producing_stage(message, dvc_yaml)
    return f"{message}; run `dvc repro {stage}`" if stage else message
