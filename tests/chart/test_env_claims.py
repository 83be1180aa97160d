"""README's claim about environment variables, held to each subcommand's `--help` ([env: …] per flag)."""

import re

import pytest
from chartlib import ROOT, hello_sidecar


def flags_and_env(command: str) -> dict[str, str | None]:
    """flag → the environment variable it reads (None if none), from `hello-sidecar COMMAND --help`."""
    out = hello_sidecar(command, "--help")
    assert out.returncode == 0, out.stderr
    found: dict[str, str | None] = {}
    last = None
    for line in out.stdout.splitlines():
        flag = re.match(r"^\s+(?:-\w, )?--([a-z][a-z-]*)", line)
        if flag:
            last = flag.group(1)
            found[last] = None
        env = re.search(r"\[env: ([A-Z_]+)=", line)
        if env and last:
            found[last] = env.group(1)
    found.pop("help", None)
    return found


@pytest.mark.parametrize("command", ["sidecar", "server", "inbound"])
def test_every_flag_of_the_long_running_roles_reads_an_env_var(command):
    flags = flags_and_env(command)
    assert len(flags) > 5
    for flag, env in flags.items():
        want = "POD_NAME" if (command, flag) == ("server", "id") else "HELLO_SIDECAR_" + flag.upper().replace("-", "_")
        assert env == want, (command, flag, env)


@pytest.mark.parametrize("command, with_env", [("call", {"addr", "log-format"}), ("demo", {"log-format"}), ("inject", {"log-format"})])
def test_the_other_roles_read_only_what_the_readme_says(command, with_env):
    flags = flags_and_env(command)
    assert {f for f, env in flags.items() if env} == with_env, flags


def test_the_readme_says_so():
    readme = (ROOT / "README.md").read_text()
    claim = " ".join(readme.split("Every flag of `sidecar`, `server` and `inbound` also reads", 1)[1].split("\n\n", 1)[0].split())
    assert "Of `call`'s flags only `--addr` does" in claim and "`demo` and `inject` read none" in claim, claim
