"""`kmlx service` CLI: render, install/uninstall/status with --dry-run or a fake launchctl/systemctl."""

from __future__ import annotations

import os
import plistlib
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from client.service import cli as service
from client.service.cli import service_app

REPO = Path(__file__).resolve().parents[2]
MODEL = "mlx-community/Qwen2.5-7B-Instruct-4bit"
# The commands deploy/README.md documents for regenerating the checked-in examples.
EXAMPLE_COMMANDS = {
    "launchd": ["render", "--platform", "launchd", "--model", MODEL, "--bin-dir", "/Users/you/kmlx/.venv/bin",
                "--workdir", "/Users/you", "--log-dir", "/Users/you/Library/Logs/kmlx", "--out", "deploy/launchd"],
    "systemd": ["render", "--platform", "systemd", "--model", MODEL, "--bin-dir", "/home/you/kmlx/.venv/bin",
                "--workdir", "/home/you", "--out", "deploy/systemd"],
}
BIN = ["--bin-dir", "/opt/kmlx/bin"]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("SUDO_USER", raising=False)
    return h


class FakeRunner:
    """Stands in for launchctl/systemctl; fails the commands it is told to."""

    def __init__(self, fail: dict[str, int] | None = None, stdout: str = "") -> None:
        self.calls: list[list[str]] = []
        self.fail = dict(fail or {})  # command prefix -> how many times to fail it
        self.stdout = stdout

    def __call__(self, cmd: list[str], capture: bool) -> subprocess.CompletedProcess[str]:
        self.calls.append(cmd)
        for prefix, n in self.fail.items():
            if " ".join(cmd).startswith(prefix) and n > 0:
                self.fail[prefix] = n - 1
                return subprocess.CompletedProcess(cmd, 5, "", "Bootstrap failed: 5")
        return subprocess.CompletedProcess(cmd, 0, self.stdout, "")


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    runner = FakeRunner()
    monkeypatch.setattr(service, "_subprocess_run", runner)
    monkeypatch.setattr(service.time, "sleep", lambda s: None)
    return runner


def invoke(*args: str) -> Result:
    return CliRunner().invoke(service_app, list(args))


def ok(*args: str) -> str:
    res = invoke(*args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


# ----------------------------------------------------------------------------- examples


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_checked_in_examples_match_the_renderer(platform: str, tmp_path: Path) -> None:
    args = EXAMPLE_COMMANDS[platform]
    out = tmp_path / platform
    ok(*args[:-1], str(out))
    rendered = {p.name: p.read_text() for p in out.iterdir()}
    checked_in = {p.name: p.read_text() for p in (REPO / args[-1]).iterdir()}
    assert rendered == checked_in, (
        f"{args[-1]} is stale: regenerate with `kmlx service {' '.join(args)}` (see deploy/README.md)")


def test_readme_documents_the_example_commands() -> None:
    readme = (REPO / "deploy/README.md").read_text()
    assert "## Run it as a service on macOS" in readme
    for args in EXAMPLE_COMMANDS.values():
        assert "kmlx service " + " ".join(args) in readme


def test_checked_in_plists_parse() -> None:
    for path in (REPO / "deploy/launchd").glob("*.plist"):
        job = plistlib.loads(path.read_bytes())
        assert job["Label"] == path.stem
        assert job["ProgramArguments"][0].startswith("/Users/you/kmlx/.venv/bin/kmlx-")


# ----------------------------------------------------------------------------- render


def test_render_prints_every_file() -> None:
    out = ok("render", "--platform", "launchd", "-m", MODEL, *BIN)
    assert "==> com.kmlx.worker.default.plist <==" in out and "==> com.kmlx.gateway.plist <==" in out
    assert "<string>/opt/kmlx/bin/kmlx-worker</string>" in out


def test_render_several_workers_with_env(tmp_path: Path) -> None:
    ok("render", "--platform", "launchd", "-m", "a/one", "-m", "b/two", "--name", "one", "--name", "two",
       "--worker-port", "6001", "--worker-port", "6002", "--gateway-port", "9000", "--host", "0.0.0.0",
       "--env", "HF_HUB_OFFLINE=1", "--env", "X=a=b", "--cache-dir", str(tmp_path / "c"),
       "--log-dir", str(tmp_path / "logs"), "--drain-timeout", "10", *BIN, "--out", str(tmp_path / "o"))
    gw = plistlib.loads((tmp_path / "o/com.kmlx.gateway.plist").read_bytes())
    assert gw["ProgramArguments"][1:] == ["--host", "0.0.0.0", "--port", "9000", "--worker", "tcp://127.0.0.1:6001",
                                          "--worker", "tcp://127.0.0.1:6002", "--drain-timeout", "10"]
    two = plistlib.loads((tmp_path / "o/com.kmlx.worker.two.plist").read_bytes())
    assert two["ProgramArguments"] == ["/opt/kmlx/bin/kmlx-worker", "-m", "b/two", "--bind", "tcp://127.0.0.1:6002",
                                       "--name", "two", "--drain-timeout", "10"]
    assert two["EnvironmentVariables"]["X"] == "a=b"
    assert two["EnvironmentVariables"]["KMLX_CACHE_DIR"] == str(tmp_path / "c")
    assert two["StandardOutPath"] == str(tmp_path / "logs/worker-two.log")
    assert (tmp_path / "o/com.kmlx.worker.two.plist").stat().st_mode & 0o777 == 0o600  # has --env values


def test_local_model_path_becomes_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "models/m").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    ok("render", "--platform", "launchd", "-m", "models/m", *BIN, "--log-dir", "/l", "--out", "o")
    job = plistlib.loads((tmp_path / "o/com.kmlx.worker.default.plist").read_bytes())
    assert job["ProgramArguments"][2] == str(tmp_path / "models/m")


def test_executables_come_from_this_venv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    venv_bin = tmp_path / "venv/bin"
    venv_bin.mkdir(parents=True)
    for name in ("python", "kmlx-worker", "kmlx-gateway"):
        (venv_bin / name).write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    assert service.find_executable("kmlx-worker", None) == str(venv_bin / "kmlx-worker")
    assert service.find_executable("kmlx-worker", "/x/bin") == "/x/bin/kmlx-worker"
    other = tmp_path / "other"
    other.mkdir()
    (other / "kmlx-probe").write_text("#!/bin/sh\n")
    (other / "kmlx-probe").chmod(0o755)
    monkeypatch.setenv("PATH", str(other))
    assert service.find_executable("kmlx-probe", None) == str(other / "kmlx-probe")  # falls back to PATH


@pytest.mark.parametrize("args, message", [
    ((), "at least one --model"),
    (("-m", "a", "-m", "b"), "one --name per --model"),
    (("-m", "a", "--worker-port", "1", "--worker-port", "2"), "one --worker-port per --model"),
    (("-m", "a", "--env", "NOEQUALS"), "KEY=VALUE"),
    (("-m", "a", "--platform", "upstart"), "launchd or systemd"),
    (("-m", "a", "--name", "bad name"), "invalid worker name"),
    (("-m", "a", "--gateway-port", "5555"), "ports must all differ"),
])
def test_render_rejects_bad_options(args: tuple[str, ...], message: str) -> None:
    res = CliRunner().invoke(service_app, ["render", "--platform", "systemd", *BIN, *args])
    assert res.exit_code == 2
    assert message in res.output


# ----------------------------------------------------------------------------- launchd install


def test_install_dry_run_prints_commands_and_changes_nothing(home: Path, fake: FakeRunner) -> None:
    out = ok("install", "--platform", "launchd", "-m", MODEL, *BIN, "--dry-run")
    agents = home / "Library/LaunchAgents"
    uid = os.getuid()
    lines = [line for line in out.splitlines() if line.startswith("+ ")]
    assert lines == [
        f"+ mkdir -p {agents}",
        f"+ mkdir -p {home}/Library/Logs/kmlx",
        f"+ launchctl bootout gui/{uid}/com.kmlx.worker.default",
        f"+ write {agents}/com.kmlx.worker.default.plist (mode 644)",
        f"+ launchctl enable gui/{uid}/com.kmlx.worker.default",
        f"+ launchctl bootstrap gui/{uid} {agents}/com.kmlx.worker.default.plist",
        f"+ launchctl bootout gui/{uid}/com.kmlx.gateway",
        f"+ write {agents}/com.kmlx.gateway.plist (mode 644)",
        f"+ launchctl enable gui/{uid}/com.kmlx.gateway",
        f"+ launchctl bootstrap gui/{uid} {agents}/com.kmlx.gateway.plist",
    ]
    assert fake.calls == [] and list(home.iterdir()) == []


def test_install_writes_plists_and_bootstraps(home: Path, fake: FakeRunner) -> None:
    ok("install", "--platform", "launchd", "-m", "a/one", "-m", "b/two", "--name", "one", "--name", "two", *BIN)
    agents = home / "Library/LaunchAgents"
    assert sorted(p.name for p in agents.iterdir()) == [
        "com.kmlx.gateway.plist", "com.kmlx.worker.one.plist", "com.kmlx.worker.two.plist"]
    assert (home / "Library/Logs/kmlx").is_dir()
    job = plistlib.loads((agents / "com.kmlx.worker.two.plist").read_bytes())
    assert job["ProgramArguments"][:3] == ["/opt/kmlx/bin/kmlx-worker", "-m", "b/two"]
    assert (agents / "com.kmlx.gateway.plist").stat().st_mode & 0o777 == 0o644
    domain = f"gui/{os.getuid()}"
    bootstraps = [c for c in fake.calls if c[1] == "bootstrap"]
    assert bootstraps == [["launchctl", "bootstrap", domain, str(agents / f"com.kmlx.{n}.plist")]
                          for n in ("worker.one", "worker.two", "gateway")]
    assert not list(agents.glob(".*"))  # no temp files left behind

    # Re-install with one worker: "two" is unloaded and removed, the others replaced.
    fake.calls.clear()
    ok("install", "--platform", "launchd", "-m", "a/one", "--name", "one", *BIN)
    assert not (agents / "com.kmlx.worker.two.plist").exists()
    assert ["launchctl", "bootout", f"{domain}/com.kmlx.worker.two"] in fake.calls
    gw = plistlib.loads((agents / "com.kmlx.gateway.plist").read_bytes())
    assert gw["ProgramArguments"].count("--worker") == 1


def test_bootstrap_is_retried_then_fails_loudly(home: Path, fake: FakeRunner) -> None:
    fake.fail = {"launchctl bootstrap": 2}
    ok("install", "--platform", "launchd", "-m", MODEL, *BIN)
    assert sum(c[1] == "bootstrap" for c in fake.calls) == 4  # worker: 3 tries, gateway: 1
    fake.fail = {"launchctl bootstrap": 99}
    res = invoke("install", "--platform", "launchd", "-m", MODEL, *BIN)
    assert res.exit_code == 2 and "launchctl bootstrap" in res.output


def test_system_daemon_dry_run(home: Path, fake: FakeRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SUDO_USER", "nobody")
    out = ok("install", "--platform", "launchd", "--system", "-m", MODEL, *BIN, "--dry-run")
    assert "+ launchctl bootstrap system /Library/LaunchDaemons/com.kmlx.gateway.plist" in out
    assert "+ mkdir -p /Library/Logs/kmlx (owner nobody)" in out
    rendered = ok("render", "--platform", "launchd", "--system", "-m", MODEL, *BIN)
    assert "<key>UserName</key>\n\t<string>nobody</string>" in rendered


def test_system_install_needs_root_and_a_non_root_user(home: Path, fake: FakeRunner,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service.os, "geteuid", lambda: 501)
    res = invoke("install", "--platform", "launchd", "--system", "-m", MODEL, *BIN)
    assert res.exit_code == 2 and "sudo" in res.output
    monkeypatch.setattr(service.getpass, "getuser", lambda: "root")
    res = invoke("render", "--platform", "launchd", "--system", "-m", MODEL, *BIN)
    assert res.exit_code == 2 and "--user" in res.output
    assert fake.calls == []


def test_uninstall_and_status_launchd(home: Path, fake: FakeRunner) -> None:
    ok("install", "--platform", "launchd", "-m", MODEL, *BIN)
    agents, domain = home / "Library/LaunchAgents", f"gui/{os.getuid()}"
    fake.calls.clear()
    fake.stdout = ("com.kmlx.gateway = {\n\tactive count = 1\n\tstate = running\n\tpid = 4242\n"
                   "\tlast exit code = (never exited)\n\tendpoints = {\n\t\tstate = active\n\t}\n}\n")
    out = ok("status", "--platform", "launchd")
    assert f"{domain}/com.kmlx.gateway: state=running, pid=4242, last exit code=(never exited)" in out
    assert ["launchctl", "print", f"{domain}/com.kmlx.worker.default"] in fake.calls
    assert "+ launchctl print" in ok("status", "--platform", "launchd", "--dry-run")
    out = ok("uninstall", "--platform", "launchd", "--dry-run")
    assert f"+ launchctl bootout {domain}/com.kmlx.gateway" in out and len(list(agents.iterdir())) == 2
    fake.calls.clear()
    ok("uninstall", "--platform", "launchd")
    assert list(agents.iterdir()) == []
    assert sorted(c[2] for c in fake.calls) == [f"{domain}/com.kmlx.gateway", f"{domain}/com.kmlx.worker.default"]
    res = invoke("status", "--platform", "launchd")
    assert res.exit_code == 1 and "no kmlx services installed" in res.output


# ----------------------------------------------------------------------------- systemd install


def test_systemd_install_uninstall(home: Path, fake: FakeRunner) -> None:
    ok("install", "--platform", "systemd", "-m", "a/one", "-m", "b/two", "--name", "one", "--name", "two",
       "--env", "HF_TOKEN=secret", *BIN)
    units, conf = home / ".config/systemd/user", home / ".config/kmlx"
    assert sorted(p.name for p in units.iterdir()) == ["kmlx-gateway.service", "kmlx-worker@.service"]
    assert sorted(p.name for p in conf.iterdir()) == ["worker-one.env", "worker-two.env"]
    assert (conf / "worker-one.env").stat().st_mode & 0o777 == 0o600
    assert (units / "kmlx-gateway.service").stat().st_mode & 0o777 == 0o600  # carries HF_TOKEN
    want = ["kmlx-worker@one.service", "kmlx-worker@two.service", "kmlx-gateway.service"]
    assert fake.calls == [["systemctl", "--user", "daemon-reload"],
                          ["systemctl", "--user", "enable", *want],
                          ["systemctl", "--user", "restart", *want]]

    fake.calls.clear()
    fake.stdout = "ActiveState=active\nSubState=running\nMainPID=77\nNRestarts=0\n"
    out = ok("status", "--platform", "systemd")
    assert "kmlx-worker@two.service: ActiveState=active, SubState=running, MainPID=77, NRestarts=0" in out

    fake.calls.clear()
    ok("install", "--platform", "systemd", "-m", "a/one", "--name", "one", *BIN)
    assert fake.calls[0] == ["systemctl", "--user", "disable", "--now", "kmlx-worker@two.service"]
    assert sorted(p.name for p in conf.iterdir()) == ["worker-one.env"]

    fake.calls.clear()
    ok("uninstall", "--platform", "systemd")
    assert fake.calls == [["systemctl", "--user", "disable", "--now", "kmlx-gateway.service",
                           "kmlx-worker@one.service"], ["systemctl", "--user", "daemon-reload"]]
    assert list(units.iterdir()) == [] and list(conf.iterdir()) == []


def test_systemd_respects_xdg_config_home(home: Path, fake: FakeRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "xdg"))
    out = ok("install", "--platform", "systemd", "-m", MODEL, *BIN, "--dry-run")
    assert f"+ write {home}/xdg/systemd/user/kmlx-worker@.service (mode 644)" in out
    assert f"+ write {home}/xdg/kmlx/worker-default.env (mode 600)" in out
    assert "journalctl --user" in out and "enable-linger" in out


def test_systemd_system_units_dry_run(home: Path, fake: FakeRunner) -> None:
    out = ok("install", "--platform", "systemd", "--system", "--user", "nobody", "-m", MODEL, *BIN, "--dry-run")
    assert "+ write /etc/systemd/system/kmlx-gateway.service (mode 644)" in out
    assert "+ write /etc/kmlx/worker-default.env (mode 600)" in out
    assert "+ systemctl enable kmlx-worker@default.service kmlx-gateway.service" in out
    rendered = ok("render", "--platform", "systemd", "--system", "--user", "nobody", "-m", MODEL, *BIN)
    assert "User=nobody" in rendered and "WantedBy=multi-user.target" in rendered


def test_workers_only_install_leaves_the_gateway_alone(home: Path, fake: FakeRunner) -> None:
    ok("install", "--platform", "launchd", "-m", MODEL, *BIN)
    fake.calls.clear()
    ok("install", "--platform", "launchd", "--no-gateway", "-m", MODEL, *BIN)
    assert (home / "Library/LaunchAgents/com.kmlx.gateway.plist").exists()
    assert all("com.kmlx.gateway" not in " ".join(c) for c in fake.calls)
