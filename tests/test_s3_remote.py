"""DVC on a real S3 API, set up exactly as docs/storage.md tells users, against moto's S3 server.

moto (`moto_server`, from PyPI) serves S3 and IAM on 127.0.0.1 in a subprocess that `timeout`
ends by itself. Its IAM is switched on after the bucket and a user's key exist, so a wrong key is
refused (403) as AWS or MinIO refuse it. The remote is added with the same commands the docs give
users: `dvc remote add -d`, `dvc remote modify ... endpointurl`, and the key with
`dvc remote modify --local` (into `.dvc/config.local`, which git ignores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from conftest import free_port
from groundiff.data.shards import read_shard, write_shard

SERVER_LIFETIME_S = 600  # moto's server ends by itself after this, even if pytest is killed
BUCKET = "groundiff-team"
REMOTE_URL = f"s3://{BUCKET}/groundiff"  # each test then points the clone at its own folder
NO_AWS_FILE = Path(__file__).parent / "no-such-aws-file"  # stands for ~/.aws/{config,credentials}: absent
SHARDS, PER_SHARD = 8, 30  # 8 shards x (30 PNGs + 3 files), their .dir listing and a model: 266 objects


@dataclass(frozen=True)
class S3Api:
    endpoint: str
    key_id: str
    secret: str

    def client(self, key_id: str | None = None, secret: str | None = None):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key_id or self.key_id, aws_secret_access_key=secret or self.secret)

    def objects(self, prefix: str) -> dict[str, bytes]:
        """Every object under `prefix` in the bucket, by key (read with the good key)."""
        s3 = self.client()
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
                for o in page.get("Contents", [])]
        return {k: s3.get_object(Bucket=BUCKET, Key=k)["Body"].read() for k in keys}

    def count(self, prefix: str) -> int:
        page = self.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return int(page.get("KeyCount", 0))


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Api]:
    """moto's S3 server on 127.0.0.1 with one bucket and one IAM user allowed on it; auth on."""
    import boto3

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    moto_server = Path(sys.executable).parent / "moto_server"
    with open(log, "w") as out:
        proc = subprocess.Popen(["timeout", str(SERVER_LIFETIME_S), str(moto_server), "-H", "127.0.0.1",
                                 "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start on {endpoint}:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.2)
        # Set up while moto still accepts anyone: a user, its key, a policy, the bucket.
        boot = {"endpoint_url": endpoint, "region_name": "us-east-1", "aws_access_key_id": "bootstrap",
                "aws_secret_access_key": "bootstrap"}
        iam = boto3.client("iam", **boot)
        iam.create_user(UserName="groundiff-ci")
        key = iam.create_access_key(UserName="groundiff-ci")["AccessKey"]
        iam.put_user_policy(UserName="groundiff-ci", PolicyName="team-bucket", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "s3:*",
                           "Resource": [f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"]}]}))
        boto3.client("s3", **boot).create_bucket(Bucket=BUCKET)
        # From now on every request is authenticated and authorised, as on AWS or MinIO.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                                      headers={"Content-Type": "text/plain"}), timeout=10).read()
        api = S3Api(endpoint, key["AccessKeyId"], key["SecretAccessKey"])
        with pytest.raises(Exception, match="InvalidAccessKeyId"):  # auth is really on
            api.client("AKIAWRONGWRONGWRONG1", "wrong").list_objects_v2(Bucket=BUCKET)
        yield api
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _env() -> dict[str, str]:
    """The test's env without any AWS credentials or config of the machine: only config.local counts."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(DVC_NO_ANALYTICS="1", AWS_CONFIG_FILE=str(NO_AWS_FILE), AWS_SHARED_CREDENTIALS_FILE=str(NO_AWS_FILE),
               AWS_EC2_METADATA_DISABLED="true")
    return env


def dvc(repo: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=_env(), capture_output=True,
                          text=True, timeout=300)
    if ok:
        assert proc.returncode == 0, f"dvc {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory, s3: S3Api) -> Path:
    """A git + DVC repository with a synthetic dataset and a model, and the S3 remote set up with
    the commands docs/storage.md gives users (there: my-bucket and a MinIO host)."""
    path = tmp_path_factory.mktemp("template") / "clone"
    path.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    dvc(path, "init", "-q")
    rng = np.random.default_rng(0)
    for shard in range(SHARDS):
        index = np.arange(shard * PER_SHARD, (shard + 1) * PER_SHARD)
        meta = pd.DataFrame({"index": index, "prompt": ["a photograph of a star"] * PER_SHARD,
                             "classes": ["star"] * PER_SHARD, "n_objects": [1] * PER_SHARD, "seed": index})
        write_shard(path / "data/synth/train", shard, meta,
                    rng.integers(0, 256, (PER_SHARD, 32, 32, 3), dtype=np.uint8),
                    torch.randn(PER_SHARD, 4, 8, 8), torch.full((PER_SHARD,), 21))
    (path / "models").mkdir()
    save_file({"w": torch.randn(256, 256)}, str(path / "models/grounding.safetensors"))
    dvc(path, "add", "-q", "data/synth/train", "models/grounding.safetensors")
    dvc(path, "remote", "add", "-d", "s3", REMOTE_URL)
    dvc(path, "remote", "modify", "s3", "endpointurl", s3.endpoint)
    dvc(path, "remote", "modify", "--local", "s3", "access_key_id", s3.key_id)
    dvc(path, "remote", "modify", "--local", "s3", "secret_access_key", s3.secret)
    return path


def make_clone(path: Path, template: Path, prefix: str) -> Path:
    """A copy of `template` whose remote is the folder `prefix` of the bucket: each test its own."""
    shutil.copytree(template, path, symlinks=True)
    dvc(path, "remote", "modify", "s3", "url", f"s3://{BUCKET}/{prefix}")
    return path


def wipe_cache_and_workspace(repo: Path) -> None:
    """What a fresh clone has: no DVC cache, no workspace copies."""
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(repo / "data/synth/train")
    (repo / "models/grounding.safetensors").unlink()


def cache_files(repo: Path) -> dict[str, bytes]:
    """The DVC cache's objects by `<2 hex>/<rest>` name (a remote holds them under files/md5/)."""
    root = repo / ".dvc" / "cache" / "files" / "md5"
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_push_wipe_pull_over_s3_gives_back_every_byte_and_no_secret_is_committed(
        tmp_path: Path, s3: S3Api, template: Path) -> None:
    repo = make_clone(tmp_path / "clone", template, "roundtrip")
    data, model = files(repo / "data/synth/train"), (repo / "models/grounding.safetensors").read_bytes()
    assert len(data) == SHARDS * (PER_SHARD + 3)

    # Nothing secret in what git would commit: the key is in .dvc/config.local, which git ignores.
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    staged = subprocess.run(["git", "ls-files"], cwd=repo, capture_output=True, text=True, check=True).stdout.split()
    assert ".dvc/config" in staged and ".dvc/config.local" not in staged
    for name in staged:
        text = (repo / name).read_bytes()
        assert s3.secret.encode() not in text and s3.key_id.encode() not in text, f"{name} holds the key"
    config = (repo / ".dvc/config").read_text()
    assert f"url = s3://{BUCKET}/roundtrip" in config and f"endpointurl = {s3.endpoint}" in config
    local = (repo / ".dvc/config.local").read_text()
    assert f"access_key_id = {s3.key_id}" in local and f"secret_access_key = {s3.secret}" in local

    push = dvc(repo, "push")
    assert f"{len(data) + 2} files pushed" in push.stdout  # every file, the folder's .dir listing, the model
    pushed = s3.objects("roundtrip/")
    assert {k.removeprefix("roundtrip/files/md5/"): v for k, v in pushed.items()} == cache_files(repo)
    # content-addressed: each file's object is named by its md5 (a folder's listing ends in .dir)
    assert all(hashlib.md5(body).hexdigest() == key.removeprefix("roundtrip/files/md5/").replace("/", "")
               for key, body in pushed.items() if not key.endswith(".dir"))

    wipe_cache_and_workspace(repo)
    dvc(repo, "pull")
    assert files(repo / "data/synth/train") == data
    assert (repo / "models/grounding.safetensors").read_bytes() == model
    assert [s.index for s in read_shard(repo / "data/synth/train/shard_00003")] == list(range(90, 120))
    assert "Cache and remote 's3' are in sync" in dvc(repo, "status", "--cloud").stdout


@pytest.mark.slow
def test_a_push_killed_midway_completes_when_rerun(tmp_path: Path, s3: S3Api, template: Path) -> None:
    repo = make_clone(tmp_path / "clone", template, "killed")
    total = len(cache_files(repo))
    # One upload at a time (-j 1), so that the kill lands with part of the objects up.
    push = subprocess.Popen([sys.executable, "-m", "dvc", "push", "-j", "1"], cwd=repo, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while s3.count("killed/") < total // 4:
            assert push.poll() is None, f"push ended before it could be killed:\n{push.stdout.read()}"
            assert time.monotonic() < deadline, "push uploaded nothing for 2 minutes"
            time.sleep(0.05)
        push.send_signal(signal.SIGKILL)
    finally:
        if push.poll() is None:
            push.kill()
        push.wait()
        assert push.stdout is not None
        push.stdout.close()
    up_at_kill = s3.count("killed/")
    assert 0 < up_at_kill < total, f"{up_at_kill} of {total} objects up: the kill was not midway"
    missing = dvc(repo, "status", "--cloud", ok=False)  # exit 1 when out of sync
    assert "new:" in missing.stdout, missing.stdout

    rerun = dvc(repo, "push")
    assert "files pushed" in rerun.stdout
    assert "Cache and remote 's3' are in sync" in dvc(repo, "status", "--cloud").stdout
    pushed = s3.objects("killed/")
    assert {k.removeprefix("killed/files/md5/"): v for k, v in pushed.items()} == cache_files(repo)

    data = files(repo / "data/synth/train")
    wipe_cache_and_workspace(repo)
    dvc(repo, "pull")
    assert files(repo / "data/synth/train") == data


def test_pull_with_a_wrong_key_fails_with_one_clear_error_and_leaves_the_workspace_alone(
        tmp_path: Path, s3: S3Api, template: Path) -> None:
    repo = make_clone(tmp_path / "clone", template, "wrongkey")
    dvc(repo, "push")
    before = files(repo / "data")
    shutil.rmtree(repo / ".dvc" / "cache")  # so that pull must download
    (repo / "models/grounding.safetensors").unlink()  # one output missing: pull would write it
    dvc(repo, "remote", "modify", "--local", "s3", "secret_access_key", "not-the-secret")

    pull = dvc(repo, "pull", ok=False)

    assert pull.returncode != 0
    errors = [line for line in pull.stderr.splitlines() if line.startswith("ERROR")]
    assert "Traceback" not in pull.stderr and len(errors) <= 2, pull.stderr
    # The cause, named once: the remote, and that S3 refused the key (403 Forbidden).
    assert errors[0].startswith("ERROR: failed to connect to s3") and "403" in errors[0] and "Forbidden" in errors[0]
    assert files(repo / "data") == before  # the workspace is untouched ...
    assert not (repo / "models/grounding.safetensors").exists()  # ... nothing half-written in it
    assert not list((repo / "models").glob("*.tmp*"))
    assert s3.secret not in pull.stderr + pull.stdout

    dvc(repo, "remote", "modify", "--local", "s3", "secret_access_key", s3.secret)  # the fix: the right key
    dvc(repo, "pull")
    assert (repo / "models/grounding.safetensors").is_file()
