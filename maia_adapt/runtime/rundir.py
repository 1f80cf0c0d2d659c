"""The run directory: created and locked by this process before Hydra writes anything into it.

Hydra creates the run directory and writes its log and `.hydra/` there before the app's code runs,
so a directory that cannot be created failed inside Hydra with a traceback, and two processes given
the same directory (a fixed hydra.run.dir, a requeued job still running, two sweeps started in the
same second) both ran in it. RunDirCallback, a Hydra callback named in conf/config.yaml, claims the
directory first: it creates it, or says in one line why it cannot, and takes an exclusive lock
(flock on `.lock`) held as long as the process lives. The kernel drops the lock when the process
dies, however it dies (SIGKILL, OOM, a power cut of the node), so a lock left by a dead process
never blocks; the file keeps the holder's pid and host for the one-line error.

Under torchrun (or a SLURM job of several tasks) every rank shares rank 0's directory; rank 0 holds
the lock.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
import time
from pathlib import Path

from hydra.experimental.callback import Callback

from ..errors import MaiaAdaptError

LOCK_FILE = ".lock"
_held: dict[str, int] = {}  # absolute run directory -> the open lock file holding its flock


def _rank() -> str:
    if "RANK" in os.environ:
        return os.environ["RANK"]
    if os.environ.get("SUBMITIT_EXECUTOR") == "slurm" and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return os.environ.get("SLURM_PROCID", "0")
    return "0"


def _holder(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 200).decode(errors="replace").split()
    return f"process {text[0]} on {text[1]}" if len(text) >= 2 else "another process"


def claim(run_dir) -> Path:
    """Create run_dir and lock it for this process (until release() or the process ends); a
    MaiaAdaptError when it cannot be created or another live process holds it."""
    path = Path(os.path.abspath(run_dir))
    if str(path) in _held:
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        if _rank() != "0":
            return path
        fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        where = f": {e.filename}" if e.filename and str(e.filename) != str(path) else ""
        raise MaiaAdaptError(f"run directory {path} cannot be created or written ({e.strerror or e}{where}): "
                             "expected a folder this process can write (set hydra.run.dir)") from None
    for attempt in range(5):  # in_use() of a sibling run holds a shared lock for microseconds: try again
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError:
            if attempt == 4:
                holder = _holder(fd)
                os.close(fd)
                raise MaiaAdaptError(f"run directory {path} is in use by {holder}: wait for it to finish, or give "
                                     "this run another hydra.run.dir") from None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
    _held[str(path)] = fd
    return path


def release(run_dir) -> None:
    fd = _held.pop(os.path.abspath(run_dir), None)
    if fd is not None:
        os.close(fd)  # drops the flock; the file stays (removing it would race with a process opening it)


def in_use(run_dir) -> str | None:
    """Who holds run_dir's lock when another live process does ('process 123 on host'), else None."""
    path = Path(os.path.abspath(run_dir))
    if str(path) in _held:
        return None
    try:
        fd = os.open(path / LOCK_FILE, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None
    except OSError:
        return _holder(fd)
    finally:
        os.close(fd)  # also drops the shared lock just taken


def _claim_or_exit(run_dir) -> None:
    try:
        claim(run_dir)
    except MaiaAdaptError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


class RunDirCallback(Callback):
    """Claims the run directory (a multirun's sweep directory and each job's) before Hydra's own code
    creates or writes it."""

    def on_run_start(self, config, **kwargs) -> None:
        _claim_or_exit(_select(config, "hydra.run.dir"))

    def on_multirun_start(self, config, **kwargs) -> None:
        _claim_or_exit(_select(config, "hydra.sweep.dir"))

    def on_job_start(self, config, **kwargs) -> None:
        # a multirun's job, in whichever process the launcher runs it (Hydra has created its folder);
        # a single run's directory is already held from on_run_start
        _claim_or_exit(config.hydra.runtime.output_dir)

    def on_job_end(self, config, job_return, **kwargs) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:  # a launcher's worker process may run further jobs
            release(config.hydra.runtime.output_dir)


def _select(config, key: str) -> str:
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    HydraConfig.instance().set_config(config)  # what run_job does next: `${hydra:...}` in the path resolves
    return str(OmegaConf.select(config, key))
