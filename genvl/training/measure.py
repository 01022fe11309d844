"""Running a training script in a child process of its own and measuring it: wall time, peak resident memory and
last loss, as the worked examples compare training set-ups."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

# runs the script named by its first argument (or the module after "-m", as python does), then prints the
# process's own peak resident memory (VmHWM, Linux)
PEAK_WRAPPER = """
import runpy, sys
module = sys.argv[1] == "-m"
sys.argv = sys.argv[1 + module :]
try:
    if module:
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    status = open("/proc/self/status").read()
    print("\\npeak_rss_kib", status.split("VmHWM:")[1].split()[0], flush=True)
"""


def run_measured(command: list, out: Path) -> dict:
    """Run a training command ([python, script, *flags] or [python, "-m", module, *flags], writing
    `out/train_losses.json`) in its own process: {"seconds", "peak_rss_mib", "final_loss"}; its output goes to
    `out/train_stdout.log`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    # the peak is read from the child's own VmHWM: getrusage would also count this process's memory, which
    # the child's address space held between fork and exec
    result = subprocess.run(
        [sys.executable, "-c", PEAK_WRAPPER, *command[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    seconds = time.perf_counter() - started
    (out / "train_stdout.log").write_text(result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"training failed; its output is in {out / 'train_stdout.log'}")
    peak_kib = int(re.findall(r"^peak_rss_kib (\d+)$", result.stdout, re.MULTILINE)[-1])
    return {
        "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak_kib / 1024, 1),
        "final_loss": json.loads((out / "train_losses.json").read_text())[-1],
    }
