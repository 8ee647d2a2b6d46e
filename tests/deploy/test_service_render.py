"""Render every launchd/systemd template and check it parses and runs the right things."""

from __future__ import annotations

import os
import plistlib
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from client.service import render as sr

BIN = "/Users/me/kmlx/.venv/bin"
TWO = (sr.WorkerSpec("qwen", "mlx-community/Qwen2.5-7B-Instruct-4bit", 5555),
       sr.WorkerSpec("local", "/Users/me/My Models/50% model", 5600))


def make_cfg(**kw) -> sr.ServiceConfig:
    base: dict[str, Any] = dict(workers=TWO, worker_exe=f"{BIN}/kmlx-worker", gateway_exe=f"{BIN}/kmlx-gateway",
                workdir="/Users/me", log_dir="/Users/me/Library/Logs/kmlx")
    base.update(kw)
    return sr.ServiceConfig(**base)


VARIANTS: dict[str, dict[str, Any]] = {
    "one-worker": dict(workers=TWO[:1]),
    "two-workers": {},
    "env-and-cache": dict(env=(("HF_TOKEN", 'a "quoted" $secret\\x'), ("PCT", "100%")),
                          cache_dir="/Users/me/kmlx cache"),
    "system": dict(system=True, user="me", home="/Users/me", log_dir="/Library/Logs/kmlx"),
    "workers-only": dict(gateway=False),
    "no-log-dir": dict(log_dir=None),  # journal on systemd
    "custom-ports": dict(host="0.0.0.0", gateway_port=9000, drain_timeout=120, throttle_interval=3),
}


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Minimal systemd INI reader keeping repeated keys (Environment=, After=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"bad line {line!r}"
        current.append((key, value))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def one(section: list[tuple[str, str]], key: str) -> str:
    found = values(section, key)
    assert len(found) == 1, f"{key}: {found}"
    return found[0]


def exec_argv(value: str, env: dict[str, str] | None = None, instance: str = "") -> list[str]:
    """Split an ExecStart= line the way systemd does for the quoting we emit."""
    out = []
    for tok in shlex.split(value):
        tok = tok.replace("%i", instance)
        for k, v in (env or {}).items():
            tok = tok.replace("${" + k + "}", v)
        out.append(tok.replace("%%", "%").replace("$$", "$"))
    return out


def parse_env_file(text: str) -> dict[str, str]:
    """systemd EnvironmentFile= double-quoted values: backslash escapes \\ \" $ `."""
    env = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, raw = line.partition("=")
        assert raw.startswith('"') and raw.endswith('"'), line
        body, out, i = raw[1:-1], [], 0
        while i < len(body):
            if body[i] == "\\" and i + 1 < len(body) and body[i + 1] in '"\\$`':
                out.append(body[i + 1])
                i += 2
            else:
                assert body[i] != '"', f"unescaped quote in {line!r}"
                out.append(body[i])
                i += 1
        env[key] = "".join(out)
    return env


def unquote_environment(value: str) -> tuple[str, str]:
    assert value.startswith('"') and value.endswith('"')
    (assignment,) = shlex.split(value)
    key, _, val = assignment.partition("=")
    return key, val.replace("%%", "%")


# ----------------------------------------------------------------------------- launchd


@pytest.mark.parametrize("variant", sorted(set(VARIANTS) - {"no-log-dir"}))  # launchd needs one
def test_launchd_plists_parse_and_run_the_right_programs(variant: str) -> None:
    cfg = make_cfg(**VARIANTS[variant])
    files = sr.render(cfg, "launchd")
    expected = [sr.worker_label(w.name) for w in cfg.workers] + ([sr.GATEWAY_LABEL] if cfg.gateway else [])
    assert [f.label for f in files] == expected  # workers before the gateway
    for f in files:
        assert f.name == f"{f.label}.plist" and f.kind == "launchd"
        job = plistlib.loads(f.content.encode())
        assert job["Label"] == f.label
        args = job["ProgramArguments"]
        assert all(isinstance(a, str) for a in args) and os.path.isabs(args[0])
        assert job["KeepAlive"] == {"SuccessfulExit": False, "Crashed": True}
        assert job["RunAtLoad"] is True
        assert job["ThrottleInterval"] == cfg.throttle_interval
        assert job["ExitTimeOut"] > cfg.drain_timeout
        assert job["WorkingDirectory"] == cfg.workdir
        assert job["ProcessType"] == "Interactive"
        log_dir = cfg.log_dir or ""
        assert job["StandardOutPath"].startswith(log_dir + "/") and job["StandardOutPath"].endswith(".log")
        assert job["StandardErrorPath"].startswith(log_dir + "/")
        assert job["StandardOutPath"] != job["StandardErrorPath"]
        env = job["EnvironmentVariables"]
        assert env["PYTHONUNBUFFERED"] == "1"
        assert env["PATH"].split(":")[0] == BIN
        for k, v in cfg.env:
            assert env[k] == v
        if cfg.system:
            assert job["UserName"] == cfg.user and env["HOME"] == cfg.home
        else:
            assert "UserName" not in job and "HOME" not in env
        assert f.private == bool(cfg.env)


def test_launchd_worker_and_gateway_arguments() -> None:
    cfg = make_cfg(cache_dir="/Users/me/cache", drain_timeout=45)
    jobs = {f.label: plistlib.loads(f.content.encode()) for f in sr.render(cfg, "launchd")}
    qwen = jobs["com.kmlx.worker.qwen"]
    assert qwen["ProgramArguments"] == [f"{BIN}/kmlx-worker", "-m", "mlx-community/Qwen2.5-7B-Instruct-4bit",
                                        "--bind", "tcp://127.0.0.1:5555", "--name", "qwen", "--drain-timeout", "45"]
    assert qwen["EnvironmentVariables"]["KMLX_CACHE_DIR"] == "/Users/me/cache"
    assert qwen["StandardOutPath"] == "/Users/me/Library/Logs/kmlx/worker-qwen.log"
    assert qwen["StandardErrorPath"] == "/Users/me/Library/Logs/kmlx/worker-qwen.err.log"
    assert qwen["ExitTimeOut"] == 75
    local = jobs["com.kmlx.worker.local"]
    assert local["ProgramArguments"][2] == "/Users/me/My Models/50% model"  # no quoting needed in a plist
    gw = jobs["com.kmlx.gateway"]
    assert gw["ProgramArguments"] == [f"{BIN}/kmlx-gateway", "--host", "127.0.0.1", "--port", "18000",
                                      "--worker", "tcp://127.0.0.1:5555", "--worker", "tcp://127.0.0.1:5600",
                                      "--drain-timeout", "45"]
    assert "KMLX_CACHE_DIR" not in gw["EnvironmentVariables"]
    assert gw["SoftResourceLimits"]["NumberOfFiles"] >= 1024


def test_launchd_needs_a_log_dir() -> None:
    with pytest.raises(ValueError, match="log directory"):
        sr.render(make_cfg(log_dir=None), "launchd")


@pytest.mark.e2e  # starts a child process
@pytest.mark.skipif(shutil.which("plutil") is None, reason="plutil is macOS-only")
def test_plutil_accepts_every_plist(tmp_path: Path) -> None:
    for variant in VARIANTS:
        if variant == "no-log-dir":
            continue
        for f in sr.render(make_cfg(**VARIANTS[variant]), "launchd"):
            (tmp_path / f.name).write_text(f.content)
            subprocess.run(["plutil", "-lint", str(tmp_path / f.name)], check=True, timeout=60)


# ----------------------------------------------------------------------------- systemd


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_systemd_units_have_the_required_keys(variant: str) -> None:
    cfg = make_cfg(**VARIANTS[variant])
    files = {f.name: f for f in sr.render(cfg, "systemd")}
    expected = {sr.WORKER_TEMPLATE_UNIT} | {f"worker-{w.name}.env" for w in cfg.workers}
    expected |= {sr.GATEWAY_UNIT} if cfg.gateway else set()
    assert set(files) == expected
    units = [files[sr.WORKER_TEMPLATE_UNIT]] + ([files[sr.GATEWAY_UNIT]] if cfg.gateway else [])
    for f in units:
        unit = parse_unit(f.content)
        assert set(unit) == {"Unit", "Service", "Install"}
        svc = unit["Service"]
        assert one(svc, "Restart") == "on-failure"
        assert one(svc, "KillSignal") == "SIGTERM"
        assert int(one(svc, "TimeoutStopSec")) > cfg.drain_timeout
        assert int(one(svc, "RestartSec")) == cfg.throttle_interval
        assert one(svc, "WorkingDirectory") == cfg.workdir
        assert os.path.isabs(exec_argv(one(svc, "ExecStart"))[0])
        env = dict(unquote_environment(v) for v in values(svc, "Environment"))
        assert env["PYTHONUNBUFFERED"] == "1"
        assert one(unit["Install"], "WantedBy") == ("multi-user.target" if cfg.system else "default.target")
        if cfg.system:
            assert one(svc, "User") == cfg.user
        else:
            assert not values(svc, "User")
        if cfg.log_dir:
            assert one(svc, "StandardOutput").startswith(f"append:{cfg.log_dir}/")
            assert one(svc, "StandardError").startswith(f"append:{cfg.log_dir}/")
        else:
            assert not values(svc, "StandardOutput")  # the journal


def test_systemd_worker_template_and_env_files_give_the_right_argv() -> None:
    cfg = make_cfg(env=(("HF_TOKEN", 'a "quoted" $secret\\x'),), cache_dir="/Users/me/kmlx cache")
    files = {f.name: f for f in sr.render(cfg, "systemd")}
    svc = parse_unit(files[sr.WORKER_TEMPLATE_UNIT].content)["Service"]
    assert one(svc, "EnvironmentFile") == "%E/kmlx/worker-%i.env"
    for w in cfg.workers:
        f = files[sr.worker_env_file(w.name)]
        assert f.private and f.label == f"kmlx-worker@{w.name}.service"
        env = parse_env_file(f.content)
        assert env == {"KMLX_WORKER_MODEL_FLAG": "-m", "KMLX_WORKER_MODEL": w.model, "KMLX_WORKER_PORT": str(w.port),
                       "HF_TOKEN": 'a "quoted" $secret\\x', "KMLX_CACHE_DIR": "/Users/me/kmlx cache"}
        argv = exec_argv(one(svc, "ExecStart"), env, instance=w.name)
        # ${VAR} as a whole word is one argument in systemd, spaces and all.
        assert argv == sr.worker_args(cfg, w)


def test_systemd_gateway_unit_orders_after_workers_and_quotes_arguments() -> None:
    cfg = make_cfg(workdir="/Users/me/with space", gateway_exe="/opt/50%/kmlx-gateway",
                   env=(("PCT", "100% $x"),))
    files = {f.name: f for f in sr.render(cfg, "systemd")}
    unit = parse_unit(files[sr.GATEWAY_UNIT].content)
    wants = "kmlx-worker@qwen.service kmlx-worker@local.service"
    assert one(unit["Unit"], "Wants") == wants and one(unit["Unit"], "After") == wants
    svc = unit["Service"]
    assert exec_argv(one(svc, "ExecStart")) == sr.gateway_args(cfg)
    assert one(svc, "WorkingDirectory") == "/Users/me/with space"
    env = dict(unquote_environment(v) for v in values(svc, "Environment"))
    assert env["PCT"] == "100% $x"
    assert files[sr.GATEWAY_UNIT].private


@pytest.mark.e2e  # starts a child process
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
@pytest.mark.parametrize("system", [False, True])
def test_systemd_analyze_verify_is_clean(tmp_path: Path, system: bool) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for exe in (sr.WORKER_EXE, sr.GATEWAY_EXE):  # verify checks ExecStart is executable
        (bindir / exe).write_text("#!/bin/sh\n")
        (bindir / exe).chmod(0o755)
    extra = dict(system=True, user="root", home="/root") if system else {}
    cfg = make_cfg(worker_exe=str(bindir / sr.WORKER_EXE), gateway_exe=str(bindir / sr.GATEWAY_EXE),
                   workdir=str(tmp_path), log_dir=str(tmp_path / "logs"), env=(("A", 'x "y" $z'),), **extra)
    units = tmp_path / "units"
    (tmp_path / "config/kmlx").mkdir(parents=True)
    units.mkdir()
    for f in sr.render(cfg, "systemd"):
        (tmp_path / "config/kmlx" / f.name if f.kind == "env" else units / f.name).write_text(f.content)
    # verify wants concrete instance files; the template is their content.
    targets = [str(units / sr.GATEWAY_UNIT)]
    for w in cfg.workers:
        inst = units / sr.worker_unit(w.name)
        inst.write_text((units / sr.WORKER_TEMPLATE_UNIT).read_text())
        targets.append(str(inst))
    (tmp_path / "run").mkdir()
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config"), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
    cmd = ["systemd-analyze"] + ([] if system else ["--user"]) + ["verify", "--man=no", *targets]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    if res.returncode != 0 and "Failed to initialize manager" in res.stderr:
        pytest.skip(f"systemd-analyze cannot run here: {res.stderr.strip()}")
    assert res.returncode == 0, res.stderr
    assert res.stderr == "", res.stderr  # warnings (unknown keys, bad quoting) land here


# ----------------------------------------------------------------------------- shared


def test_rendering_is_deterministic() -> None:
    cfg = make_cfg(env=(("B", "2"), ("A", "1")))
    for platform in ("launchd", "systemd"):
        assert sr.render(cfg, platform) == sr.render(cfg, platform)


@pytest.mark.parametrize("change, message", [
    (dict(workers=(TWO[0], replace(TWO[1], name="qwen"))), "unique"),
    (dict(workers=(TWO[0], replace(TWO[1], port=5555))), "ports"),
    (dict(gateway_port=5555), "ports"),
    (dict(workers=(replace(TWO[0], name="bad/name"),)), "invalid worker name"),
    (dict(workers=(replace(TWO[0], name="-x"),)), "invalid worker name"),
    (dict(workers=(replace(TWO[0], port=70000),)), "out of range"),
    (dict(workers=(replace(TWO[0], model="a\nb"),)), "newlines"),
    (dict(workers=(replace(TWO[0], model=""),)), "no model"),
    (dict(env=(("1BAD", "x"),)), "environment variable name"),
    (dict(env=(("OK", "line\nbreak"),)), "newlines"),
    (dict(workdir="relative/dir"), "absolute"),
    (dict(worker_exe="kmlx-worker"), "absolute"),
    (dict(system=True), "user"),
    (dict(workers=()), "at least one worker"),
    (dict(workers=(), gateway=False), "nothing to render"),
])
def test_invalid_configs_are_rejected(change: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sr.validate(make_cfg(**change))


def test_unknown_platform() -> None:
    with pytest.raises(ValueError, match="platform"):
        sr.render(make_cfg(), "upstart")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- real parsers


def _parser_flags(parser) -> set[str]:
    return {flag for action in parser._actions for flag in action.option_strings}


def test_worker_cli_accepts_the_rendered_arguments() -> None:
    worker_cli = pytest.importorskip("worker.cli")
    cfg = make_cfg(drain_timeout=45)
    for w in cfg.workers:
        args = worker_cli.build_parser().parse_args(sr.worker_args(cfg, w)[1:])
        assert (args.model, args.bind, args.name, args.drain_timeout) == (
            w.model, f"tcp://127.0.0.1:{w.port}", w.name, 45)


def test_a_models_dir_worker_gets_models_dir_everywhere() -> None:
    worker_cli = pytest.importorskip("worker.cli")
    w = sr.WorkerSpec("library", "/Users/me/models", 5557, models_dir=True)
    cfg = make_cfg(workers=(w,))
    args = worker_cli.build_parser().parse_args(sr.worker_args(cfg, w)[1:])
    assert (args.models_dir, args.model) == ("/Users/me/models", None)
    files = {f.name: f for f in sr.render(cfg, "systemd")}
    env = parse_env_file(files[sr.worker_env_file("library")].content)
    svc = parse_unit(files[sr.WORKER_TEMPLATE_UNIT].content)["Service"]
    assert exec_argv(one(svc, "ExecStart"), env, instance="library") == sr.worker_args(cfg, w)
    plist = plistlib.loads(next(f for f in sr.render(cfg, "launchd") if "worker" in f.name).content.encode())
    assert plist["ProgramArguments"][1:3] == ["--models-dir", "/Users/me/models"]


def test_gateway_cli_accepts_the_rendered_arguments() -> None:
    gateway_cli = pytest.importorskip("gateway.cli")
    parser = gateway_cli.build_parser()
    if "--drain-timeout" not in _parser_flags(parser):
        pytest.xfail("kmlx-gateway has no --drain-timeout yet (issue #8, graceful shutdown)")
    cfg = make_cfg(drain_timeout=45)
    args = parser.parse_args(sr.gateway_args(cfg)[1:])
    assert (args.host, args.port, args.workers) == ("127.0.0.1", 18000, ["tcp://127.0.0.1:5555",
                                                                         "tcp://127.0.0.1:5600"])
    assert args.drain_timeout == 45


def test_executable_names_are_the_installed_console_scripts() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    scripts = tomllib.loads(pyproject.read_text())["project"]["scripts"]
    assert scripts[sr.WORKER_EXE] == "worker.cli:main"
    assert scripts[sr.GATEWAY_EXE] == "gateway.cli:main"
