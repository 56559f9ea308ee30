"""scripts/gpu_check.py helpers that decide what a failing or CPU-only check prints."""

import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import gpu_check


def test_a_failing_command_that_printed_nothing_is_reported_not_raised():
    silent = subprocess.CompletedProcess(["x"], 1, stdout="", stderr="")
    assert gpu_check._last_line(silent) == "(no output)"
    only_stdout = subprocess.CompletedProcess(["x"], 1, stdout="a\nKilled\n", stderr="  \n")
    assert gpu_check._last_line(only_stdout) == "Killed"
    both = subprocess.CompletedProcess(["x"], 2, stdout="ok", stderr="error: data.path missing\n")
    assert gpu_check._last_line(both) == "error: data.path missing"


def test_model_flop_utilisation_is_only_claimed_on_a_known_gpu():
    assert gpu_check._mfu({"cuda": False}, 1e12, 1.0) == ""
