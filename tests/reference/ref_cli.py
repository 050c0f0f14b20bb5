"""ref_cli.py: the command line the `mlmpi-train step` reference tests share.

    BIN_TEST.py --bin PATH/mlmpi-train [--workdir DIR] [--seed N] [--timeout S]
    BIN_TEST.py --self-test
"""
import argparse
import os
import subprocess
import tempfile

import torch


def log(s):
    print(s, flush=True)


def start(doc, seed, timeout, self_test, prefix):
    """Parses the shared flags. Returns an exit code when the run ends here (--self-test ran
    self_test(seed, log); the binary is missing), else (args, workdir) for the comparisons
    against the binary: workdir is --workdir, or a new temporary directory."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--bin", help="path to mlmpi-train")
    ap.add_argument("--workdir", help="keep inputs and outputs here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=seed)
    ap.add_argument("--timeout", type=int, default=timeout,
                    help="per-run timeout of the binary (s)")
    ap.add_argument("--self-test", action="store_true", help="reference-side checks only")
    a = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    if a.self_test:
        return self_test(a.seed, log)
    if not a.bin:
        ap.error("--bin is required (or --self-test)")
    if not os.path.exists(a.bin):
        log("FAIL binary not found: %s" % a.bin)
        return 1
    workdir = a.workdir or tempfile.mkdtemp(prefix=prefix)
    os.makedirs(workdir, exist_ok=True)
    return a, workdir


class SubprocessRunner:
    """Runs the binary with args: (exit code, stderr), or (None, why) past the timeout."""

    def __init__(self, binary, timeout):
        self.binary, self.timeout = binary, timeout

    def __call__(self, args):
        try:
            p = subprocess.run([self.binary] + args, capture_output=True, text=True,
                               timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return None, "timed out after %ds" % self.timeout
        return p.returncode, p.stderr
