"""Hostile samples through the sandbox: what each one did, and what was checked afterwards.

Each program is what a model could write: an infinite loop, a memory hog, a fork bomb, a socket to a port
this script listens on, writes into the home directory and into the repository, a read of this script's own
environment through /proc, a kill of its parent and of this script, ``os._exit(0)`` before the tests, and
100 MB of output. Every program ends with ``assert`` lines that only hold if the attack worked, so a sample
that *passes* is an attack that succeeded. After each run the script checks: it is still alive, no sandbox
process is left, the target files do not exist, the listener saw no connection, and its secret was not read.

    python benchmarks/sandbox_hostile.py                   # every isolation layer available here
    python benchmarks/sandbox_hostile.py --layers bubblewrap --samples fork,socket
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import psutil

from fedpeft.evaluation.sandbox import ISOLATIONS, SandboxLimits, isolation_available, run_program

REPO = Path(__file__).resolve().parents[1]
HOME = Path(os.path.expanduser("~"))
SECRET = os.environ.get("FEDPEFT_HOSTILE_SECRET") or uuid.uuid4().hex
LIMITS = SandboxLimits(timeout_s=3.0, cpu_s=3, memory_mb=512, file_size_mb=16)


def hostile_programs(port: int, home_file: Path, repo_file: Path, harness: int) -> dict[str, str]:
    """The samples; ``harness`` is the pid of the process that runs them (whose environment holds SECRET)."""
    return {
        "infinite loop": "while True:\n    pass\n",
        "memory hog (8 GB)": "x = bytearray(8 * 1024 ** 3)\nassert len(x) > 0\n",
        "fork bomb": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        "socket to a local port": f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "s.sendall(b'leak')\n",
        "write into home": f"open({str(home_file)!r}, 'w').write('x')\n",
        "write into the repository": f"open({str(repo_file)!r}, 'w').write('x')\n",
        "read another process's environment": f"data = open('/proc/{harness}/environ', 'rb').read()\n"
        f"assert {SECRET!r}.encode() in data\n",
        "kill its parent and the harness": f"import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
        f"os.kill({harness}, signal.SIGKILL)\n",
        "os._exit(0) before the tests": "import os\nos._exit(0)\nassert False, 'the tests'\n",
        "100 MB of output": "import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 1024 * 1024)\n",
    }


def run_one(layer: str, name: str, port: int, home_file: Path, repo_file: Path) -> None:
    """In a harness process of its own (so a sample that kills its harness cannot stop the table)."""
    program = hostile_programs(port, home_file, repo_file, os.getpid())[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_program(program, LIMITS, isolation=layer)
    print(json.dumps({"status": result.status, "passed": result.passed, "seconds": result.seconds}))


def sandbox_survivors(before: set[int]) -> int:
    """Processes running a sandbox program whose run is over (its directory is gone: the harness removes it
    when the sample ends), new since ``before``; samples of other runs still going are not counted."""
    count = 0
    for proc in psutil.process_iter(["cmdline"]):
        programs = [part for part in proc.info["cmdline"] or () if "fedpeft-sandbox-" in part]
        if proc.pid not in before and programs and not any(os.path.exists(p) for p in programs):
            count += 1
    return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", default=",".join(ISOLATIONS), help="Isolation layers to try.")
    parser.add_argument(
        "--samples", default="", help="Only samples whose name contains one of these (comma-separated)."
    )
    parser.add_argument(
        "--one", nargs=5, metavar=("LAYER", "NAME", "PORT", "HOME_FILE", "REPO_FILE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.one:
        layer, name, port, home_file, repo_file = args.one
        run_one(layer, name, int(port), Path(home_file), Path(repo_file))
        return
    tag = uuid.uuid4().hex[:8]
    home_file, repo_file = HOME / f"fedpeft-hostile-{tag}", REPO / f"fedpeft-hostile-{tag}"
    columns = ["layer", "sample", "status", "passed", "seconds", "harness alive", "no survivors", "files untouched"]
    columns += ["no connection", "secret kept"]
    print("| " + " | ".join(columns) + " |")
    print("|" + " --- |" * len(columns))
    attacks_won = 0
    for layer in args.layers.split(","):
        if not isolation_available(layer):
            print(f"| {layer} | (not available here) |" + " - |" * (len(columns) - 2))
            continue
        for name in hostile_programs(0, home_file, repo_file, 0):
            if args.samples and not any(part in name for part in args.samples.split(",")):
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
                server.bind(("127.0.0.1", 0))
                server.listen(1)
                server.setblocking(False)
                port = str(server.getsockname()[1])
                before = {p.pid for p in psutil.process_iter()}
                harness = subprocess.run(
                    [sys.executable, __file__, "--one", layer, name, port, str(home_file), str(repo_file)],
                    capture_output=True,
                    text=True,
                    env={**os.environ, "FEDPEFT_HOSTILE_SECRET": SECRET},
                )
                time.sleep(0.2)
                try:
                    server.accept()[0].close()
                    connected = True
                except BlockingIOError:
                    connected = False
            alive = harness.returncode == 0
            result = (
                json.loads(harness.stdout.splitlines()[-1]) if alive else {"status": "-", "passed": "-", "seconds": 0}
            )
            untouched = not home_file.exists() and not repo_file.exists()
            survivors = sandbox_survivors(before)
            leaked = name.startswith("read another") and result["passed"] is True
            won = result["passed"] is True or connected or not untouched or survivors > 0 or not alive
            attacks_won += won
            checks = ["yes" if alive else "NO", "yes" if not survivors else f"NO ({survivors})"]
            checks += ["yes" if untouched else "NO", "yes" if not connected else "NO", "NO" if leaked else "yes"]
            cells = [layer, name, result["status"], str(result["passed"]), f"{result['seconds']:.2f}", *checks]
            print("| " + " | ".join(cells) + " |")
            for leftover in (home_file, repo_file):
                leftover.unlink(missing_ok=True)
    print(f"\nsamples that got anything past the sandbox: {attacks_won}")


if __name__ == "__main__":
    main()
