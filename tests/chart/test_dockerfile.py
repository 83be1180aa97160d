"""The Dockerfile: hadolint-clean, the dependency layer kept, and scripts/docker_replay.py able to catch a build
context that lacks a file (the full replay of the real Dockerfile is a step of scripts/test: it compiles)."""

import subprocess
import sys

import dockerfile
from chartlib import ROOT, TOOLS

REPLAY = [sys.executable, str(ROOT / "scripts" / "docker_replay.py")]


def test_hadolint_finds_nothing():
    out = subprocess.run([str(TOOLS / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dependencies_build_in_a_layer_before_the_sources_arrive():
    cmds = dockerfile.parse_file(str(ROOT / "Dockerfile"))
    first_build = next(i for i, c in enumerate(cmds) if c.cmd == "RUN" and "cargo build" in c.value[0])
    copy_src = next(i for i, c in enumerate(cmds) if c.cmd == "COPY" and c.value[0] == "src")
    assert first_build < copy_src, "the cached dependency layer must come before COPY src"


def replay(tmp_path, dockerfile_text=None, dockerignore_text=None):
    df = tmp_path / "Dockerfile"
    df.write_text(dockerfile_text if dockerfile_text is not None else (ROOT / "Dockerfile").read_text())
    di = tmp_path / "dockerignore"
    di.write_text(dockerignore_text if dockerignore_text is not None else (ROOT / ".dockerignore").read_text())
    return subprocess.run([*REPLAY, "--dockerfile", str(df), "--dockerignore", str(di)], capture_output=True, text=True, timeout=600)


def test_the_replay_fails_the_old_dockerfile_that_left_benches_out(tmp_path):
    broken = (ROOT / "Dockerfile").read_text().replace("COPY benches benches\n", "")
    assert broken != (ROOT / "Dockerfile").read_text()
    out = replay(tmp_path, dockerfile_text=broken)
    assert out.returncode != 0
    assert "can't find `discovery` bench" in out.stdout + out.stderr, out.stdout + out.stderr


def test_the_replay_fails_when_dockerignore_drops_a_needed_file(tmp_path):
    out = replay(tmp_path, dockerignore_text=(ROOT / ".dockerignore").read_text() + "proto/\n")
    assert out.returncode != 0
    assert "COPY proto: not found in the build context or excluded by .dockerignore" in out.stderr, out.stderr
