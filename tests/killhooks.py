"""Kill-test machinery: `python -m train` in a subprocess, held if asked at a named pause point of
pause_hook/sitecustomize.py (switched on by DE_TEST_HOOK), and a SIGKILL once a given file exists."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent / "pause_hook"


def cli(run: Path, *args: str, hook: str | None = None, env: dict | None = None, **popen) -> subprocess.Popen:
    """`python -m train` into `run`, its output (stdout and stderr) in `<run>.out` next to the run directory: a pipe
    nobody reads while the test waits would fill up and stall the run. One thread: runs share the cores. `hook`
    names the pause point the run holds at."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    if hook:
        full_env.update(DE_TEST_HOOK=hook, PYTHONPATH=os.pathsep.join(
            p for p in (str(HOOK_DIR), full_env.get("PYTHONPATH")) if p))
    log = run.parent / f"{run.name}.out"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "train", f"hydra.run.dir={run}", *args], cwd=run.parent,
                                env=full_env, stdout=out, stderr=subprocess.STDOUT, **popen)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float = 240) -> tuple[int, str]:
    proc.wait(timeout=timeout)
    return proc.returncode, proc.log.read_text()


def kill_when(proc: subprocess.Popen, pattern: str, folder: Path, timeout: float = 180) -> Path:
    """SIGKILLs `proc` once a file matching `pattern` exists under `folder`; returns that file."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if found := next(folder.glob(pattern), None):
            proc.send_signal(signal.SIGKILL)
            finish(proc)
            return found
        assert proc.poll() is None, f"exited with {proc.returncode} before {pattern}: {finish(proc)[1][-3000:]}"
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"no {pattern} under {folder} after {timeout}s")
