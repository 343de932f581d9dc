"""Resume by killing: SIGKILL a run at a random point, rerun it, get the uninterrupted run's bytes.

Each test starts `_resume_worker.py` in a subprocess on a tiny seeded world, waits until a random
number of shards is finished, sleeps a random part of a shard's time (so the kill usually lands
in the middle of writing one), SIGKILLs it, checks that readers see only finished shards, plants
what a kill can leave behind, reruns to completion and compares every byte with an uninterrupted
run. The kill's random seed is in the assertion messages, to replay a failure.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import _resume_worker as world
from groundiff.data.shards import complete_shards, read_meta, read_shard
from groundiff.data.voc import split_ids
from groundiff.method.pseudo_label import read_labels

WORKER = Path(__file__).with_name("_resume_worker.py")
pytestmark = pytest.mark.slow  # a fresh interpreter per kill (~5-10 s of imports on a busy machine)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return world.build(tmp_path_factory.mktemp("tiny_world"))


@pytest.fixture(scope="module")
def synth(models, tmp_path_factory):
    """An uninterrupted synthesis: the reference for synthesize, and pseudo_label's input."""
    out = tmp_path_factory.mktemp("reference") / "synth"
    world.run("synthesize", models, out)
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _finished(kind: str, out: Path) -> int:
    """Shards a reader would accept as finished."""
    if kind == "synth_dataset":
        return len(list((out / "shards").glob("shard_*.json")))
    if kind == "synthesize":
        return len(complete_shards(out))
    return sum((p / "labels.csv").is_file() for p in out.glob("shard_*") if not p.name.endswith(".partial"))


def _kill_part_way(kind: str, models: Path, out: Path, total: int, log: Path, *extra: Path) -> tuple[int, int]:
    """Run `kind` in a subprocess and SIGKILL it part-way; returns (finished shards, random seed)."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    target = rng.randint(1, total - 3)  # finished shards to wait for; >= 2 stay to do after the kill
    with open(log, "w") as log_file:
        proc = subprocess.Popen([sys.executable, str(WORKER), kind, str(models), str(out), *map(str, extra)],
                                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline, first = time.monotonic() + 180, None
        while (n := _finished(kind, out)) < target:
            if proc.poll() is not None:
                pytest.fail(f"{kind} exited with {proc.returncode} before being killed:\n{log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"{kind} finished no shard in 180 s:\n{log.read_text()[-3000:]}")
            if n and first is None:
                first = (time.monotonic(), n)
            time.sleep(0.005)
        # a random moment within the next shard (measured pace), so at most one more finishes
        per_shard = (time.monotonic() - first[0]) / (n - first[1]) if first and n > first[1] else 0.1
        time.sleep(rng.uniform(0, per_shard))
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = _finished(kind, out)
    assert proc.returncode == -signal.SIGKILL and 1 <= done < total, (
        f"kill seed {seed}: expected a killed run with some shards left, got rc {proc.returncode}, {done}/{total}")
    return done, seed


def test_killed_synthesis_resumes_to_the_uninterrupted_bytes(models, synth, tmp_path):
    out = tmp_path / "synth"
    done, seed = _kill_part_way("synthesize", models, out, 12, tmp_path / "log.txt")
    # Readers see only finished shards, and each is exactly the reference's.
    shards = complete_shards(out)
    assert len(shards) == done and len(read_meta(out)) == 2 * done
    for shard in shards:
        read_shard(shard)
        assert _files(shard) == _files(synth / shard.name), f"kill seed {seed}: {shard.name} differs"
    # What a kill in the middle of a shard leaves: ignored by readers, removed by the rerun.
    junk = out / "shard_00011.partial"
    (junk / "images").mkdir(parents=True, exist_ok=True)
    (junk / "meta.csv").write_text("index,prompt\n0,half-writ")
    (out / ".synthesis.json.x1.tmp").write_text('{"fingerp')
    assert "shard_00011.partial" not in [p.name for p in complete_shards(out)]
    stats = world.run("synthesize", models, out)
    assert stats["resumed_shards"] == done
    assert _files(out) == _files(synth), f"kill seed {seed}: resumed output differs"


def test_killed_synth_dataset_resumes_to_the_uninterrupted_bytes(models, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "dataset"
    world.run("synth_dataset", models, reference)
    done, seed = _kill_part_way("synth_dataset", models, out, 10, tmp_path / "log.txt")
    # The split lists are written only from finished shards' markers: a killed run has none to read.
    with pytest.raises(FileNotFoundError, match="no such split list"):
        split_ids(out, "one")
    for marker in (out / "shards").glob("shard_*.json"):
        assert marker.read_bytes() == (reference / "shards" / marker.name).read_bytes(), f"kill seed {seed}"
    # A kill mid-shard leaves truncated images and temp files of atomic writes: never listed, redone.
    (out / "JPEGImages" / "synth_000019.jpg").write_bytes(b"\xff\xd8\xff")
    (out / "shards" / ".shard_00009.json.x1.tmp").write_text('{"samp')
    stats = world.run("synth_dataset", models, out)
    assert stats["resumed_shards"] == done
    assert _files(out) == _files(reference), f"kill seed {seed}: resumed output differs"


def test_killed_pseudo_labelling_resumes_to_the_uninterrupted_bytes(models, synth, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "labels"
    world.run("pseudo_label", models, reference, synth)
    done, seed = _kill_part_way("pseudo_label", models, out, 12, tmp_path / "log.txt", synth)
    assert read_labels(out)["shard"].nunique() == done
    # the shard being labelled at the kill: half-written, ignored by readers, redone
    following = sorted(p.name for p in complete_shards(synth))[done]
    junk = out / f"{following}.partial"
    (junk / "masks").mkdir(parents=True, exist_ok=True)
    (junk / "labels.csv").write_text("index,k,class\n0,0,ci")
    assert following not in set(read_labels(out)["shard"])
    world.run("pseudo_label", models, out, synth)
    assert _files(out) == _files(reference), f"kill seed {seed}: resumed output differs"
