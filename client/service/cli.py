"""`kmlx service`: render, install, uninstall and inspect kmlx as a service.

launchd (macOS) or systemd (Linux). The files come from the pure renderer in
``client/service/render.py``; this module only looks things up on the machine
(venv, home, uid) and runs launchctl/systemctl. ``--dry-run`` prints every
file write and command instead of doing it.
"""

import getpass
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from client.service import render as sr

service_app = typer.Typer(
    name="service",
    help="Run kmlx-gateway and kmlx-worker as launchd (macOS) or systemd (Linux) services.",
    no_args_is_help=True,
)

DEFAULT_WORKER_PORT = 5555
BOOTSTRAP_RETRIES = 5  # bootout of a draining job can lag; bootstrap then fails briefly

# ----------------------------------------------------------------------------- options
PlatformOpt = Annotated[str | None, typer.Option(
    "--platform", help="launchd or systemd (default: launchd on macOS, systemd elsewhere).")]
SystemOpt = Annotated[bool, typer.Option(
    "--system", help="System daemons (/Library/LaunchDaemons, /etc/systemd/system; needs root) "
    "instead of per-user services.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would be written and run; change nothing.")]
ModelOpt = Annotated[list[str] | None, typer.Option(
    "--model", "-m", help="Model for a worker (HF repo, local dir or GGUF). Repeat for several workers.")]
ModelsDirOpt = Annotated[list[str] | None, typer.Option(
    "--models-dir", help="A folder of models for a worker, each loaded on first use (after any --model workers). "
    "Repeatable.")]
NameOpt = Annotated[list[str] | None, typer.Option(
    "--name", help="Worker name, one per --model/--models-dir in the same order (default: 'default' for one worker).")]
WorkerPortOpt = Annotated[list[int] | None, typer.Option(
    "--worker-port", help=f"Worker ZMQ port, one per --model (default: {DEFAULT_WORKER_PORT}, "
    f"{DEFAULT_WORKER_PORT + 1}, ...).")]
GatewayPortOpt = Annotated[int, typer.Option("--gateway-port", help="Gateway HTTP port.")]
HostOpt = Annotated[str, typer.Option("--host", help="Gateway listen address.")]
NoGatewayOpt = Annotated[bool, typer.Option("--no-gateway", help="Workers only (the gateway runs elsewhere).")]
LogDirOpt = Annotated[str | None, typer.Option(
    "--log-dir", help="Log directory (default: ~/Library/Logs/kmlx on macOS; the journal on Linux).")]
WorkdirOpt = Annotated[str | None, typer.Option("--workdir", help="Working directory (default: home).")]
BinDirOpt = Annotated[str | None, typer.Option(
    "--bin-dir", help="Directory holding kmlx-worker/kmlx-gateway (default: this Python's venv, then PATH).")]
EnvOpt = Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE for every service. Repeatable.")]
CacheDirOpt = Annotated[str | None, typer.Option("--cache-dir", help="KMLX_CACHE_DIR for workers.")]
DrainOpt = Annotated[int, typer.Option("--drain-timeout", help="Seconds streams may finish after SIGTERM.")]
UserOpt = Annotated[str | None, typer.Option(
    "--user", help="Account a --system service runs as (default: $SUDO_USER).")]


def _fail(msg: str) -> "typer.Exit":
    typer.secho(f"error: {msg}", err=True, fg=typer.colors.RED)
    return typer.Exit(code=2)


def _platform(value: str | None) -> sr.Platform:
    if value is None:
        return "launchd" if sys.platform == "darwin" else "systemd"
    if value not in ("launchd", "systemd"):
        raise _fail(f"--platform must be launchd or systemd, not {value!r}")
    return value  # type: ignore[return-value]


# ----------------------------------------------------------------------------- lookups


def find_executable(name: str, bin_dir: str | None) -> str:
    """Absolute path of a kmlx console script: --bin-dir, else this venv, else PATH."""
    if bin_dir:
        return str(Path(bin_dir).expanduser().absolute() / name)
    # Not resolve(): a venv's python is a symlink to the base interpreter,
    # and the scripts live next to the symlink.
    here = Path(sys.executable).absolute().parent / name
    if here.exists():
        return str(here)
    found = shutil.which(name)
    if found:
        return str(Path(found).absolute())
    typer.secho(f"warning: {name} not found in {here.parent} or on PATH; is kmlx installed "
                "(pip install -e .)? Using the venv path anyway.", err=True, fg=typer.colors.YELLOW)
    return str(here)


def _service_user(system: bool, user: str | None) -> str | None:
    if not system:
        return None
    who = user or os.environ.get("SUDO_USER") or getpass.getuser()
    if who == "root" and not user:
        # Model servers parse untrusted input; don't run them as root by accident.
        raise _fail("refusing to run the services as root; pass --user ACCOUNT (or --user root)")
    return who


def _home_of(user: str | None) -> str:
    if user is None:
        return str(Path.home())
    try:
        return pwd.getpwnam(user).pw_dir
    except KeyError:
        raise _fail(f"no such user {user!r}") from None


def _model_arg(model: str) -> str:
    # Services start in another directory: make local model paths absolute.
    p = Path(model).expanduser()
    return str(p.absolute()) if p.exists() else model


def _models_dir_arg(folder: str) -> str:
    p = Path(folder).expanduser()
    if not p.is_dir():
        raise _fail(f"--models-dir {folder} is not a folder")
    return str(p.absolute())


def _parse_env(items: list[str] | None) -> tuple[tuple[str, str], ...]:
    env: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise _fail(f"--env expects KEY=VALUE, got {item!r}")
        env[key] = value
    return tuple(env.items())


def build_config(platform: sr.Platform, models: list[str] | None, names: list[str] | None,
                 ports: list[int] | None, gateway_port: int, host: str, no_gateway: bool,
                 log_dir: str | None, workdir: str | None, bin_dir: str | None,
                 env: list[str] | None, cache_dir: str | None, drain_timeout: int,
                 system: bool, user: str | None, models_dirs: list[str] | None = None) -> sr.ServiceConfig:
    served = [(m, False) for m in models or []] + [(_models_dir_arg(d), True) for d in models_dirs or []]
    if not served and not no_gateway:
        raise _fail("give at least one --model or --models-dir")
    names = names or (["default"] if len(served) == 1 else [])
    if len(names) != len(served):
        raise _fail("give one --name per --model/--models-dir (same order)")
    ports = ports or [DEFAULT_WORKER_PORT + i for i in range(len(served))]
    if len(ports) != len(served):
        raise _fail("give one --worker-port per --model/--models-dir (same order)")
    account = _service_user(system, user)
    home = _home_of(account)
    if log_dir is None and platform == "launchd":
        log_dir = "/Library/Logs/kmlx" if system else f"{home}/Library/Logs/kmlx"
    cfg = sr.ServiceConfig(
        workers=tuple(sr.WorkerSpec(n, m if is_dir else _model_arg(m), p, models_dir=is_dir)
                      for n, (m, is_dir), p in zip(names, served, ports)),
        worker_exe=find_executable(sr.WORKER_EXE, bin_dir),
        gateway_exe=find_executable(sr.GATEWAY_EXE, bin_dir),
        workdir=str(Path(workdir).expanduser().absolute()) if workdir else home,
        log_dir=str(Path(log_dir).expanduser().absolute()) if log_dir else None,
        host=host, gateway_port=gateway_port, gateway=not no_gateway, env=_parse_env(env),
        cache_dir=str(Path(cache_dir).expanduser().absolute()) if cache_dir else None,
        drain_timeout=drain_timeout, system=system, user=account, home=home if system else None,
    )
    try:
        sr.validate(cfg)
    except ValueError as e:
        raise _fail(str(e)) from None
    return cfg


def install_dirs(platform: sr.Platform, system: bool) -> dict[str, Path]:
    """Where each kind of rendered file goes on this machine."""
    if platform == "launchd":
        return {"launchd": Path("/Library/LaunchDaemons") if system else Path.home() / "Library/LaunchAgents"}
    if system:
        return {"unit": Path("/etc/systemd/system"), "env": Path("/etc/kmlx")}
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    # Must match %E/kmlx in the worker template.
    return {"unit": config / "systemd/user", "env": config / "kmlx"}


def _launchd_domain(system: bool) -> str:
    return "system" if system else f"gui/{os.getuid()}"


def _systemctl(system: bool) -> list[str]:
    return ["systemctl"] if system else ["systemctl", "--user"]


# ----------------------------------------------------------------------------- side effects


def _subprocess_run(cmd: list[str], capture: bool) -> subprocess.CompletedProcess[str]:
    # One seam for tests: monkeypatch this to record commands.
    return subprocess.run(cmd, text=True, capture_output=capture, check=False)


class Actions:
    """File writes and commands, or (dry run) a printout of them."""

    def __init__(self, dry_run: bool) -> None:
        self.dry_run = dry_run

    def run(self, cmd: list[str], check: bool = True, quiet: bool = False) -> subprocess.CompletedProcess[str]:
        if self.dry_run or not quiet:  # quiet: housekeeping and queries, shown only in a dry run
            typer.echo("+ " + " ".join(cmd))
        if self.dry_run:
            return subprocess.CompletedProcess(cmd, 0, "", "")
        try:
            res = _subprocess_run(cmd, capture=quiet)
        except FileNotFoundError:
            raise _fail(f"{cmd[0]} not found; is this the right --platform?") from None
        if check and res.returncode != 0:
            raise _fail(f"`{' '.join(cmd)}` exited with {res.returncode}")
        return res

    def mkdir(self, path: Path, owner: str | None = None) -> None:
        typer.echo(f"+ mkdir -p {path}" + (f" (owner {owner})" if owner else ""))
        if not self.dry_run:
            path.mkdir(parents=True, exist_ok=True)
            if owner:
                shutil.chown(path, user=owner)

    def write(self, path: Path, content: str, private: bool) -> None:
        mode = 0o600 if private else 0o644
        typer.echo(f"+ write {path} (mode {mode:o})")
        if not self.dry_run:
            write_atomic(path, content, mode)

    def remove(self, path: Path) -> None:
        typer.echo(f"+ rm -f {path}")
        if not self.dry_run:
            path.unlink(missing_ok=True)


def write_atomic(path: Path, content: str, mode: int) -> None:
    # A crash mid-write must not leave launchd/systemd a truncated file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _installed(platform: sr.Platform, dirs: dict[str, Path]) -> list[str]:
    """Labels (launchd) or worker names (systemd) of what is installed now."""
    if platform == "launchd":
        return sorted(p.name[: -len(".plist")] for p in dirs["launchd"].glob("com.kmlx.*.plist"))
    return sorted(p.name[len("worker-"): -len(".env")] for p in dirs["env"].glob("worker-*.env"))


def _check_root(system: bool, dry_run: bool) -> None:
    if system and not dry_run and os.geteuid() != 0:
        raise _fail("--system services need root: run it with sudo")


# ----------------------------------------------------------------------------- commands


@service_app.command()
def render(
    model: ModelOpt = None, models_dir: ModelsDirOpt = None, name: NameOpt = None, worker_port: WorkerPortOpt = None,
    gateway_port: GatewayPortOpt = 18000, host: HostOpt = "127.0.0.1", no_gateway: NoGatewayOpt = False,
    log_dir: LogDirOpt = None, workdir: WorkdirOpt = None, bin_dir: BinDirOpt = None, env: EnvOpt = None,
    cache_dir: CacheDirOpt = None, drain_timeout: DrainOpt = 30, system: SystemOpt = False,
    user: UserOpt = None, platform: PlatformOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the files into this directory.")] = None,
) -> None:
    """Print (or write with --out) the service files for these options."""
    plat = _platform(platform)
    cfg = build_config(plat, model, name, worker_port, gateway_port, host, no_gateway, log_dir,
                       workdir, bin_dir, env, cache_dir, drain_timeout, system, user, models_dir)
    files = sr.render(cfg, plat)
    if out is None:
        for f in files:
            typer.echo(f"==> {f.name} <==")
            typer.echo(f.content, nl=not f.content.endswith("\n"))
        return
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        write_atomic(out / f.name, f.content, 0o600 if f.private else 0o644)
        typer.echo(str(out / f.name))


@service_app.command()
def install(
    model: ModelOpt = None, models_dir: ModelsDirOpt = None, name: NameOpt = None, worker_port: WorkerPortOpt = None,
    gateway_port: GatewayPortOpt = 18000, host: HostOpt = "127.0.0.1", no_gateway: NoGatewayOpt = False,
    log_dir: LogDirOpt = None, workdir: WorkdirOpt = None, bin_dir: BinDirOpt = None, env: EnvOpt = None,
    cache_dir: CacheDirOpt = None, drain_timeout: DrainOpt = 30, system: SystemOpt = False,
    user: UserOpt = None, platform: PlatformOpt = None, dry_run: DryRunOpt = False,
) -> None:
    """Write the service files and start them (re-running replaces the installed set)."""
    plat = _platform(platform)
    _check_root(system, dry_run)
    cfg = build_config(plat, model, name, worker_port, gateway_port, host, no_gateway, log_dir,
                       workdir, bin_dir, env, cache_dir, drain_timeout, system, user, models_dir)
    files = sr.render(cfg, plat)
    act, dirs = Actions(dry_run), install_dirs(plat, system)
    for d in dirs.values():
        act.mkdir(d)
    if cfg.log_dir:
        act.mkdir(Path(cfg.log_dir), owner=cfg.user)  # a daemon's user must be able to write logs
    if plat == "launchd":
        _install_launchd(act, files, dirs["launchd"], system)
    else:
        _install_systemd(act, cfg, files, dirs, system)
    _print_next_steps(cfg, plat)


def _install_launchd(act: Actions, files: list[sr.RenderedFile], target: Path, system: bool) -> None:
    domain = _launchd_domain(system)
    keep = {f.label for f in files}
    for label in _installed("launchd", {"launchd": target}):
        # A worker left over from a previous install: the new gateway doesn't
        # know it. (With --no-gateway an installed gateway is left alone.)
        if label.startswith(sr.WORKER_LABEL_PREFIX) and label not in keep:
            act.run(["launchctl", "bootout", f"{domain}/{label}"], check=False, quiet=True)
            act.remove(target / f"{label}.plist")
    for f in files:  # workers first: render() orders them so
        path = target / f.name
        # bootstrap refuses a label that is already loaded, so unload the old one.
        act.run(["launchctl", "bootout", f"{domain}/{f.label}"], check=False, quiet=True)
        act.write(path, f.content, f.private)
        act.run(["launchctl", "enable", f"{domain}/{f.label}"])
        for attempt in range(BOOTSTRAP_RETRIES):
            last = attempt == BOOTSTRAP_RETRIES - 1
            if act.run(["launchctl", "bootstrap", domain, str(path)], check=last).returncode == 0:
                break
            time.sleep(1.0)


def _install_systemd(act: Actions, cfg: sr.ServiceConfig, files: list[sr.RenderedFile],
                     dirs: dict[str, Path], system: bool) -> None:
    ctl = _systemctl(system)
    keep = {w.name for w in cfg.workers}
    for stale in _installed("systemd", dirs):
        if stale not in keep:
            act.run(ctl + ["disable", "--now", sr.worker_unit(stale)], check=False, quiet=True)
            act.remove(dirs["env"] / sr.worker_env_file(stale))
    for f in files:
        act.write(dirs[f.kind] / f.name, f.content, f.private)
    units = [sr.worker_unit(w.name) for w in cfg.workers] + ([sr.GATEWAY_UNIT] if cfg.gateway else [])
    act.run(ctl + ["daemon-reload"])
    # enable + restart rather than `enable --now`: a re-install must pick up
    # the new files even when the units are already running.
    act.run(ctl + ["enable"] + units)
    act.run(ctl + ["restart"] + units)


def _print_next_steps(cfg: sr.ServiceConfig, plat: sr.Platform) -> None:
    typer.echo("")
    if cfg.gateway:
        typer.echo(f"Gateway: http://{cfg.host}:{cfg.gateway_port}/v1 (health: /health)")
    if cfg.log_dir:
        typer.echo(f"Logs: {cfg.log_dir}")
    elif plat == "systemd":
        flag = "" if cfg.system else " --user"
        typer.echo(f"Logs: journalctl{flag} -u 'kmlx-*' -f")
    if plat == "systemd" and not cfg.system:
        typer.echo("To keep services running after you log out: loginctl enable-linger $USER")
    typer.echo("Check: kmlx service status")


@service_app.command()
def uninstall(platform: PlatformOpt = None, system: SystemOpt = False, dry_run: DryRunOpt = False) -> None:
    """Stop every kmlx service and remove its files (logs are kept)."""
    plat = _platform(platform)
    _check_root(system, dry_run)
    act, dirs = Actions(dry_run), install_dirs(plat, system)
    if plat == "launchd":
        domain = _launchd_domain(system)
        for label in _installed(plat, dirs):
            act.run(["launchctl", "bootout", f"{domain}/{label}"], check=False, quiet=True)
            act.remove(dirs["launchd"] / f"{label}.plist")
        return
    ctl = _systemctl(system)
    names = _installed(plat, dirs)
    units = [sr.worker_unit(n) for n in names]
    if (dirs["unit"] / sr.GATEWAY_UNIT).exists():
        units.insert(0, sr.GATEWAY_UNIT)
    if units:
        act.run(ctl + ["disable", "--now"] + units, check=False)
    for n in names:
        act.remove(dirs["env"] / sr.worker_env_file(n))
    for unit in (sr.GATEWAY_UNIT, sr.WORKER_TEMPLATE_UNIT):
        if (dirs["unit"] / unit).exists():
            act.remove(dirs["unit"] / unit)
    act.run(ctl + ["daemon-reload"], check=False)


@service_app.command()
def status(platform: PlatformOpt = None, system: SystemOpt = False, dry_run: DryRunOpt = False) -> None:
    """Show whether each installed kmlx service is running."""
    plat = _platform(platform)
    act, dirs = Actions(dry_run), install_dirs(plat, system)
    installed = _installed(plat, dirs)
    if plat == "launchd":
        targets = [f"{_launchd_domain(system)}/{label}" for label in installed]
    else:
        targets = [sr.worker_unit(n) for n in installed]
        if (dirs["unit"] / sr.GATEWAY_UNIT).exists():
            targets.insert(0, sr.GATEWAY_UNIT)
    if not targets:
        typer.echo(f"no kmlx services installed in {', '.join(map(str, dirs.values()))}")
        raise typer.Exit(code=1)
    for target in targets:
        if plat == "launchd":
            res = act.run(["launchctl", "print", target], check=False, quiet=True)
            info = sr.parse_launchctl_print(res.stdout) if res.returncode == 0 else {"state": "not loaded"}
        else:
            res = act.run(_systemctl(system) + ["show", "--property=ActiveState,SubState,MainPID,NRestarts",
                                                 target], check=False, quiet=True)
            info = sr.parse_systemctl_show(res.stdout)
        if not dry_run:
            typer.echo(f"{target}: " + ", ".join(f"{k}={v}" for k, v in info.items()))

