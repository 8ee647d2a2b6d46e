"""Render launchd plists and systemd units for kmlx-gateway and kmlx-worker.

Pure functions only: every path and name comes in through ``ServiceConfig``,
so the same inputs always give byte-identical files (the checked-in examples
in ``deploy/`` are compared against this output by the tests). Looking things
up on the machine (venv, home, uid) and running launchctl/systemctl is the
CLI's job, in ``client/service/cli.py``; the parsers for their status output live
here because they are pure text functions too.

Plists are built as dicts and serialised with ``plistlib`` so they are always
well-formed; systemd units are plain INI text with careful quoting.
"""

from __future__ import annotations

import plistlib
import re
from dataclasses import dataclass, field
from typing import Any, Literal

Platform = Literal["launchd", "systemd"]
FileKind = Literal["launchd", "unit", "env"]

GATEWAY_LABEL = "com.kmlx.gateway"
WORKER_LABEL_PREFIX = "com.kmlx.worker."
GATEWAY_UNIT = "kmlx-gateway.service"
WORKER_TEMPLATE_UNIT = "kmlx-worker@.service"
WORKER_EXE = "kmlx-worker"
GATEWAY_EXE = "kmlx-gateway"
# Extra time past the drain timeout before the service manager sends SIGKILL:
# a worker also has to persist conversation caches after its streams finish.
STOP_MARGIN_S = 30
# launchd's default PATH is only /usr/bin:/bin:/usr/sbin:/sbin; Homebrew
# tools (ffmpeg for video, git for HF downloads) live elsewhere.
LAUNCHD_EXTRA_PATH = ("/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class WorkerSpec:
    name: str
    model: str  # -m value, or the folder of a --models-dir worker
    port: int
    models_dir: bool = False  # serve every model in `model`, each loaded on first use


@dataclass(frozen=True)
class ServiceConfig:
    workers: tuple[WorkerSpec, ...]
    worker_exe: str  # absolute path to kmlx-worker
    gateway_exe: str  # absolute path to kmlx-gateway
    workdir: str
    # launchd needs files to log to; for systemd None means "the journal".
    log_dir: str | None
    host: str = "127.0.0.1"
    gateway_port: int = 18000  # the gateway's and `kmlx chat`'s default
    gateway: bool = True  # False: workers only (gateway runs elsewhere)
    env: tuple[tuple[str, str], ...] = ()  # applied to every service
    cache_dir: str | None = None  # KMLX_CACHE_DIR for workers
    drain_timeout: int = 30
    throttle_interval: int = 10
    system: bool = False  # LaunchDaemon / system unit instead of per-user
    user: str | None = None  # account a system service runs as
    home: str | None = None  # HOME for system services (HF cache lives there)


@dataclass(frozen=True)
class RenderedFile:
    name: str  # file name only; the installer picks the directory by kind
    kind: FileKind
    content: str
    # Files that may carry user-supplied environment (API keys, tokens) are
    # written 0600 rather than world-readable.
    private: bool = False
    label: str = field(default="")  # launchd label or systemd unit name


# --------------------------------------------------------------------------- naming


def worker_label(name: str) -> str:
    return WORKER_LABEL_PREFIX + name


def worker_unit(name: str) -> str:
    return f"kmlx-worker@{name}.service"


def worker_env_file(name: str) -> str:
    return f"worker-{name}.env"


def worker_endpoint(port: int) -> str:
    # Workers always bind loopback: the ZMQ port is a trust boundary.
    return f"tcp://127.0.0.1:{port}"


def stop_timeout(cfg: ServiceConfig) -> int:
    return cfg.drain_timeout + STOP_MARGIN_S


# --------------------------------------------------------------------------- validation


def validate(cfg: ServiceConfig) -> None:
    """Raise ValueError with a user-facing message if cfg cannot be rendered."""
    if not cfg.workers and not cfg.gateway:
        raise ValueError("nothing to render: no workers and no gateway")
    if cfg.gateway and not cfg.workers:
        raise ValueError("the gateway needs at least one worker (--model)")
    names = [w.name for w in cfg.workers]
    for n in names:
        if not _NAME_RE.match(n):
            raise ValueError(f"invalid worker name {n!r}: use letters, digits, '_', '.', '-' (max 64)")
    if len(set(names)) != len(names):
        raise ValueError(f"worker names must be unique, got {names}")
    ports = [w.port for w in cfg.workers] + ([cfg.gateway_port] if cfg.gateway else [])
    for p in ports:
        if not 1 <= p <= 65535:
            raise ValueError(f"port {p} out of range 1-65535")
    if len(set(ports)) != len(ports):
        raise ValueError(f"worker and gateway ports must all differ, got {ports}")
    for w in cfg.workers:
        _check_value("model", w.model)
        if not w.model:
            raise ValueError(f"worker {w.name!r} has no model")
    for key, value in cfg.env:
        if not _ENV_KEY_RE.match(key):
            raise ValueError(f"invalid environment variable name {key!r}")
        _check_value(key, value)
    for label, path in (("worker executable", cfg.worker_exe), ("gateway executable", cfg.gateway_exe),
                        ("working directory", cfg.workdir), ("log directory", cfg.log_dir),
                        ("cache directory", cfg.cache_dir), ("home", cfg.home)):
        if path is not None:
            _check_value(label, path)
            if not path.startswith("/"):
                raise ValueError(f"{label} must be an absolute path, got {path!r}")
    if cfg.drain_timeout < 0 or cfg.throttle_interval < 1:
        raise ValueError("drain timeout must be >= 0 and throttle interval >= 1")
    if cfg.system and not cfg.user:
        raise ValueError("a system service needs a user to run as")


def _check_value(what: str, value: str) -> None:
    # A newline would split a unit-file line; NUL cannot be passed to exec.
    if "\n" in value or "\r" in value or "\0" in value:
        raise ValueError(f"{what} must not contain newlines or NUL")


# --------------------------------------------------------------------------- arguments


def model_flag(w: WorkerSpec) -> str:
    return "--models-dir" if w.models_dir else "-m"


def worker_args(cfg: ServiceConfig, w: WorkerSpec) -> list[str]:
    # The worker's own drain timeout must match the one ExitTimeOut is sized for.
    return [cfg.worker_exe, model_flag(w), w.model, "--bind", worker_endpoint(w.port), "--name", w.name,
            "--drain-timeout", str(cfg.drain_timeout)]


def gateway_args(cfg: ServiceConfig) -> list[str]:
    args = [cfg.gateway_exe, "--host", cfg.host, "--port", str(cfg.gateway_port)]
    for w in cfg.workers:
        args += ["--worker", worker_endpoint(w.port)]
    return args + ["--drain-timeout", str(cfg.drain_timeout)]


def _worker_env(cfg: ServiceConfig) -> dict[str, str]:
    env = dict(cfg.env)
    if cfg.cache_dir:
        env["KMLX_CACHE_DIR"] = cfg.cache_dir
    return env


# --------------------------------------------------------------------------- launchd


def _launchd_job(cfg: ServiceConfig, label: str, args: list[str], log_stem: str,
                 env: dict[str, str]) -> dict[str, Any]:
    if cfg.log_dir is None:
        raise ValueError("launchd jobs need a log directory")
    bin_dirs = [cfg.worker_exe.rsplit("/", 1)[0], cfg.gateway_exe.rsplit("/", 1)[0]]
    path = ":".join(dict.fromkeys([*bin_dirs, *LAUNCHD_EXTRA_PATH]))
    full_env = {"PATH": path, "PYTHONUNBUFFERED": "1"}
    if cfg.system and cfg.home:
        full_env["HOME"] = cfg.home  # daemons get no HOME; HF cache needs one
    full_env.update(env)
    job: dict[str, Any] = {
        "Label": label,
        "ProgramArguments": args,
        "RunAtLoad": True,
        # Restart after a crash or non-zero exit, but not after a clean
        # SIGTERM drain (exit 0), so `launchctl kill TERM` really stops it.
        "KeepAlive": {"SuccessfulExit": False, "Crashed": True},
        "ThrottleInterval": cfg.throttle_interval,
        # launchd sends SIGTERM, then SIGKILL after this many seconds.
        "ExitTimeOut": stop_timeout(cfg),
        # Unset ProcessType means "light resource limits" (throttled CPU/IO);
        # an inference server is latency-critical.
        "ProcessType": "Interactive",
        "WorkingDirectory": cfg.workdir,
        "EnvironmentVariables": full_env,
        "StandardOutPath": f"{cfg.log_dir}/{log_stem}.log",
        "StandardErrorPath": f"{cfg.log_dir}/{log_stem}.err.log",
    }
    if cfg.system:
        job["UserName"] = cfg.user
    return job


def launchd_worker(cfg: ServiceConfig, w: WorkerSpec) -> dict[str, Any]:
    return _launchd_job(cfg, worker_label(w.name), worker_args(cfg, w), f"worker-{w.name}", _worker_env(cfg))


def launchd_gateway(cfg: ServiceConfig) -> dict[str, Any]:
    job = _launchd_job(cfg, GATEWAY_LABEL, gateway_args(cfg), "gateway", dict(cfg.env))
    # macOS's default soft limit is 256 descriptors; each stream holds a socket.
    job["SoftResourceLimits"] = {"NumberOfFiles": 4096}
    return job


def plist_text(job: dict[str, Any]) -> str:
    return plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=True).decode("utf-8")


# --------------------------------------------------------------------------- systemd


def sd_literal(arg: str) -> str:
    """Quote one literal ExecStart argument (no specifiers, no $VARS)."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not re.search(r"[\s\"'\\;]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sd_path(path: str) -> str:
    """A path setting (WorkingDirectory=, append:): raw to end of line, specifiers expanded."""
    return path.replace("%", "%%")


def _sd_assignment(key: str, value: str) -> str:
    # Environment="K=V": specifiers are expanded here, so % must be doubled.
    v = f"{key}={value}".replace("%", "%%").replace("\\", "\\\\").replace('"', '\\"')
    return f'Environment="{v}"'


def _env_file_line(key: str, value: str) -> str:
    # EnvironmentFile= uses shell-like quoting; escape what double quotes keep.
    v = re.sub(r'(["\\$`])', r"\\\1", value)
    return f'{key}="{v}"'


def _sd_service_section(cfg: ServiceConfig, exec_start: str, log_stem: str,
                        env_lines: list[str]) -> list[str]:
    lines = [
        "[Service]",
        "Type=exec",
        f"ExecStart={exec_start}",
        f"WorkingDirectory={sd_path(cfg.workdir)}",
        _sd_assignment("PYTHONUNBUFFERED", "1"),
        *env_lines,
        # Restart crashes, not a clean drain after `systemctl stop`.
        "Restart=on-failure",
        f"RestartSec={cfg.throttle_interval}",
        # SIGTERM starts the graceful drain; SIGKILL only after the drain
        # timeout plus time to persist caches.
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={stop_timeout(cfg)}",
    ]
    if cfg.log_dir is not None:
        # log_stem may hold a specifier (%i), so only the directory is escaped.
        lines += [f"StandardOutput=append:{sd_path(cfg.log_dir)}/{log_stem}.log",
                  f"StandardError=append:{sd_path(cfg.log_dir)}/{log_stem}.err.log"]
    if cfg.system:
        lines.append(f"User={cfg.user}")
    return lines


def _sd_unit_head(cfg: ServiceConfig, description: str) -> list[str]:
    lines = [
        "# Generated by `kmlx service render`; re-run it rather than editing by hand.",
        "[Unit]",
        f"Description={description}",
        # Give up after 10 crashes in 5 minutes instead of looping forever.
        "StartLimitIntervalSec=300",
        "StartLimitBurst=10",
    ]
    if cfg.system:  # network.target only exists in the system manager
        lines.insert(3, "After=network.target")
    return lines


def _sd_install(cfg: ServiceConfig) -> list[str]:
    return ["", "[Install]", f"WantedBy={'multi-user.target' if cfg.system else 'default.target'}", ""]


def systemd_worker_template(cfg: ServiceConfig) -> str:
    """One template serves every worker; per-worker model/port live in %E/kmlx/worker-%i.env."""
    exec_start = " ".join([
        sd_literal(cfg.worker_exe), "${KMLX_WORKER_MODEL_FLAG}", "${KMLX_WORKER_MODEL}",
        "--bind", "tcp://127.0.0.1:${KMLX_WORKER_PORT}", "--name", "%i",
        "--drain-timeout", str(cfg.drain_timeout),
    ])
    lines = _sd_unit_head(cfg, "kmlx MLX worker %i") + [""]
    # %E is ~/.config for user units and /etc for system units.
    lines += _sd_service_section(cfg, exec_start, "worker-%i", ["EnvironmentFile=%E/kmlx/worker-%i.env"])
    return "\n".join(lines + _sd_install(cfg))


def systemd_worker_env(cfg: ServiceConfig, w: WorkerSpec) -> str:
    env = {"KMLX_WORKER_MODEL_FLAG": model_flag(w), "KMLX_WORKER_MODEL": w.model, "KMLX_WORKER_PORT": str(w.port),
           **_worker_env(cfg)}
    lines = [f"# Environment for {worker_unit(w.name)} (generated by `kmlx service render`)."]
    lines += [_env_file_line(k, v) for k, v in env.items()]
    return "\n".join(lines) + "\n"


def systemd_gateway(cfg: ServiceConfig) -> str:
    head = _sd_unit_head(cfg, "kmlx OpenAI-compatible gateway")
    units = " ".join(worker_unit(w.name) for w in cfg.workers)
    # After= also orders shutdown in reverse: the gateway stops (and drains
    # its streams) while the workers are still up.
    head += [f"Wants={units}", f"After={units}", ""]
    exec_start = " ".join(sd_literal(a) for a in gateway_args(cfg))
    service = _sd_service_section(cfg, exec_start, "gateway", [_sd_assignment(k, v) for k, v in cfg.env])
    return "\n".join(head + service + _sd_install(cfg))


# --------------------------------------------------------------------------- all files


def render(cfg: ServiceConfig, platform: Platform) -> list[RenderedFile]:
    """Every file for cfg, workers first (they should be up before the gateway)."""
    validate(cfg)
    has_env = bool(cfg.env)
    out: list[RenderedFile] = []
    if platform == "launchd":
        for w in cfg.workers:
            label = worker_label(w.name)
            out.append(RenderedFile(f"{label}.plist", "launchd", plist_text(launchd_worker(cfg, w)),
                                    private=has_env, label=label))
        if cfg.gateway:
            out.append(RenderedFile(f"{GATEWAY_LABEL}.plist", "launchd", plist_text(launchd_gateway(cfg)),
                                    private=has_env, label=GATEWAY_LABEL))
    elif platform == "systemd":
        if cfg.workers:
            out.append(RenderedFile(WORKER_TEMPLATE_UNIT, "unit", systemd_worker_template(cfg),
                                    label=WORKER_TEMPLATE_UNIT))
        for w in cfg.workers:
            out.append(RenderedFile(worker_env_file(w.name), "env", systemd_worker_env(cfg, w),
                                    private=True, label=worker_unit(w.name)))
        if cfg.gateway:
            out.append(RenderedFile(GATEWAY_UNIT, "unit", systemd_gateway(cfg), private=has_env,
                                    label=GATEWAY_UNIT))
    else:
        raise ValueError(f"unknown platform {platform!r}")
    return out


# --------------------------------------------------------------------------- status output


def parse_launchctl_print(text: str) -> dict[str, str]:
    """The few useful fields of `launchctl print` (its format is not stable; be lenient)."""
    wanted = {"state", "pid", "last exit code", "runs"}
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition(" = ")
        if sep and key in wanted and key not in info:  # first hit: the job, not a nested block
            info[key] = value.strip()
    return info


def parse_systemctl_show(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
