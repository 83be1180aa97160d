#!/usr/bin/env python3
"""Replay the Dockerfile's builder stage without a Docker engine, to prove the build context is complete.

An empty directory receives exactly what the stage's COPY lines bring from the build context (after
.dockerignore, matched by the Docker SDK's own matcher), then the stage's RUN commands run there with /bin/sh -c,
as `docker build` would run them. A file the build needs but the context lacks fails here as it fails there.
Then every `COPY --from=<builder>` of the later stages must find its source in what the builder made.

    .test-tools/venv/bin/python scripts/docker_replay.py                  # replay every builder stage
    .test-tools/venv/bin/python scripts/docker_replay.py --exact          # the release profile untouched (slow)
    .test-tools/venv/bin/python scripts/docker_replay.py --dockerfile F --dockerignore I   # another file pair

What differs from a real build, and why it does not change which files are needed:
- the image's root is a scratch directory; `WORKDIR /src` is <scratch>/src (RUN commands use relative paths);
- the toolchain and the crate cache are this machine's (the image has the same Rust release);
- `target/` is a symlink to a kept directory (target/docker-replay), so only the first run compiles the
  dependencies; unless --exact, the release profile's optimisation knobs are set to dev-like values through
  CARGO_PROFILE_RELEASE_* so a replay takes seconds, not minutes of LTO. Manifest, build script, sources and the
  commands themselves are the Dockerfile's.
Needs the PyPI packages `dockerfile` (BuildKit's own parser) and `docker` (its .dockerignore matcher).
"""

import argparse
import glob
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile
from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parents[1]
FAST_PROFILE = {
    "CARGO_PROFILE_RELEASE_OPT_LEVEL": "0",
    "CARGO_PROFILE_RELEASE_LTO": "false",
    "CARGO_PROFILE_RELEASE_CODEGEN_UNITS": "256",
    "CARGO_PROFILE_RELEASE_DEBUG": "false",
    "CARGO_PROFILE_RELEASE_INCREMENTAL": "true",
}


class ReplayError(Exception):
    pass


def dockerignore_patterns(path: Path) -> list[str]:
    """The patterns as the Docker SDK reads .dockerignore: stripped lines, no blanks, no comments."""
    if not path.exists():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def stage_context(context: Path, patterns: list[str], into: Path) -> None:
    """Copies the files `docker build` would send (the context minus .dockerignore) into `into`."""
    for rel in sorted(exclude_paths(str(context), list(patterns), dockerfile="Dockerfile")):
        src, dst = context / rel, into / rel
        if src.is_symlink():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.readlink(src), dst)
        elif src.is_dir():
            dst.mkdir(parents=True, exist_ok=True)
        elif src.is_file():
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)


def builder_stages(commands) -> set[str]:
    """Stages that a later stage copies from (`COPY --from=NAME`): those whose build must succeed."""
    names = set()
    for c in commands:
        for flag in c.flags:
            if c.cmd == "COPY" and flag.startswith("--from="):
                names.add(flag.removeprefix("--from="))
    return names


def copy_into(staged: Path, sources: list[str], dest: Path, dest_is_dir: bool, line: int) -> None:
    """Docker's COPY: a directory source copies its contents; files land in dest/ or at dest."""
    matched = []
    for s in sources:
        hits = sorted(glob.glob(str(staged / s.lstrip("/")))) if glob.has_magic(s) else [str(staged / s.lstrip("/"))]
        hits = [h for h in hits if os.path.lexists(h)]
        if not hits:
            raise ReplayError(f"Dockerfile:{line}: COPY {s}: not found in the build context or excluded by .dockerignore")
        matched += hits
    if len(matched) > 1 and not dest_is_dir:
        raise ReplayError(f"Dockerfile:{line}: COPY with several sources needs a destination ending in /")
    for h in map(Path, matched):
        if h.is_dir() and not h.is_symlink():
            shutil.copytree(h, dest, symlinks=True, dirs_exist_ok=True)
        else:
            target = dest / h.name if dest_is_dir or dest.is_dir() else dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(h, target, follow_symlinks=False)


def replay(dockerfile_path: Path, ignore_path: Path, context: Path, work: Path, cache: Path, exact: bool) -> None:
    commands = dockerfile.parse_file(str(dockerfile_path))
    wanted = builder_stages(commands)
    staged = work / "context"
    shutil.rmtree(work, ignore_errors=True)
    staged.mkdir(parents=True)
    stage_context(context, dockerignore_patterns(ignore_path), staged)
    env = {k: v for k, v in os.environ.items() if k not in ("CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR")}
    if not exact:
        env |= FAST_PROFILE
    stage, root, workdir, stage_env = None, None, None, {}
    replayed = set()
    later_copies = []  # (line, builder stage, sources) of COPY --from=<builder> in the stages not replayed
    for c in commands:
        if c.cmd == "FROM":
            stage = c.value[2] if len(c.value) == 3 and c.value[1].upper() == "AS" else None
            root = work / f"stage-{stage}"
            workdir, stage_env = root, {}
            continue
        if stage not in wanted:
            if c.cmd == "COPY":
                for flag in c.flags:
                    if flag.startswith("--from=") and flag.removeprefix("--from=") in wanted:
                        later_copies.append((c.start_line, flag.removeprefix("--from="), c.value[:-1]))
            continue
        replayed.add(stage)
        where = f"Dockerfile:{c.start_line}"
        if c.cmd == "WORKDIR":
            workdir = root / c.value[0].lstrip("/") if c.value[0].startswith("/") else workdir / c.value[0]
            workdir.mkdir(parents=True, exist_ok=True)
            # The kept target directory: the stage's `target/` under its WORKDIR.
            cache.mkdir(parents=True, exist_ok=True)
            if not (workdir / "target").exists():
                (workdir / "target").symlink_to(cache)
        elif c.cmd in ("ENV", "ARG"):
            pairs = c.value
            if c.cmd == "ENV":
                stage_env |= dict(zip(pairs[0::2], pairs[1::2]))
            else:
                stage_env |= dict(p.split("=", 1) for p in pairs if "=" in p)
        elif c.cmd == "COPY":
            if any(f.startswith("--from=") for f in c.flags):
                raise ReplayError(f"{where}: COPY --from inside a builder stage is not replayed")
            *sources, dest = c.value
            dest_path = root / dest.lstrip("/") if dest.startswith("/") else workdir / dest
            print(f"==> {where}: {c.original}", flush=True)
            copy_into(staged, sources, dest_path, dest.endswith("/") or len(sources) > 1, c.start_line)
        elif c.cmd == "RUN":
            if c.json:
                raise ReplayError(f"{where}: exec-form RUN is not replayed")
            print(f"==> {where}: RUN {c.value[0]}", flush=True)
            run = subprocess.run(["/bin/sh", "-c", c.value[0]], cwd=workdir, env=env | stage_env)
            if run.returncode != 0:
                raise ReplayError(f"{where}: RUN exited {run.returncode}: {c.value[0]}")
        elif c.cmd in ("LABEL", "EXPOSE", "USER", "ENTRYPOINT", "CMD", "STOPSIGNAL", "HEALTHCHECK"):
            continue
        else:
            raise ReplayError(f"{where}: {c.cmd} is not replayed by {Path(__file__).name}")
    if not replayed:
        raise ReplayError("no builder stage found (a stage that a later COPY --from names)")
    check_later_copies(work, later_copies)


def check_later_copies(work: Path, copies) -> None:
    """Every `COPY --from=<builder> SRC` of a later stage names something the builder's RUN steps made (a renamed
    binary or a changed WORKDIR fails `docker build` there, and here)."""
    for line, stage, sources in copies:
        for s in sources:
            path = str(work / f"stage-{stage}" / s.lstrip("/"))
            hits = glob.glob(path) if glob.has_magic(s) else [path]
            if not [h for h in hits if os.path.exists(h)]:
                raise ReplayError(f"Dockerfile:{line}: COPY --from={stage} {s}: the {stage} stage did not make it")
            print(f"==> Dockerfile:{line}: COPY --from={stage} {s}: present", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dockerfile", type=Path, default=ROOT / "Dockerfile")
    p.add_argument("--dockerignore", type=Path, default=ROOT / ".dockerignore")
    p.add_argument("--context", type=Path, default=ROOT)
    p.add_argument("--exact", action="store_true", help="keep the release profile as the Dockerfile builds it")
    args = p.parse_args()
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    # A fixed scratch path (not a fresh temp dir) keeps cargo's fingerprints valid from one replay to the next.
    work = Path("/tmp") / ("hello-sidecar-docker-replay" + str(ROOT).replace("/", "-"))
    cache = target / ("docker-replay-exact" if args.exact else "docker-replay")
    try:
        replay(args.dockerfile, args.dockerignore, args.context.resolve(), work, cache, args.exact)
    except (ReplayError, OSError) as e:
        print(f"docker build replay failed: {e}", file=sys.stderr)
        return 1
    print("docker build replay: the builder stage built from the context alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
