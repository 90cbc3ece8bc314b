"""Run the fuzz targets over the sanitized compiled core: the test command's step and the long run.

    python tests/fuzz/run.py [--seconds 60] [--runs N] [--target codec|request|all] [--max-len B] [--out DIR]

Builds the modules (build.py, into build/fuzz), then runs each target under atheris with
atheris's ASan+UBSan+libFuzzer runtime preloaded, niced, seeded from tests/fuzz/corpus:
``--seconds`` is the time of all targets together (split evenly), ``--runs`` the inputs of
each (the long run). New inputs go to OUT/<target>-corpus, never into the repository; a
crash, a sanitizer report or a failed check stops the target and leaves the input in
OUT/<target>-crash-* (or -timeout-*, -oom-*); the command then exits 1 and names it. Exit 0: no finding.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGETS = ("codec", "request")
MAX_LEN = 65536  # the captured uploads are 40 KiB (the long run: 8192, twice the speed)
# Python's own allocations through malloc (not pymalloc's arenas), so AddressSanitizer sees
# an overrun of any object; leak checking off: the interpreter keeps memory at exit.
ENV = {"PYTHONMALLOC": "malloc",
       "ASAN_OPTIONS": "detect_leaks=0:allocator_may_return_null=1:handle_abort=1",
       "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1"}


def corpus_dirs(target):
    """The committed corpus the target starts from: the captures, then its own inputs."""
    dirs = [HERE / "corpus" / "seeds", HERE / "corpus" / target]
    return [d for d in dirs if d.is_dir()]


def fuzz(target, core, out, seconds=None, runs=None, max_len=MAX_LEN, pymalloc=False):
    """Run one target; (exit code, runs done, seconds, crash files)."""
    import atheris
    work = out / (target + "-corpus")
    work.mkdir(parents=True, exist_ok=True)
    prefix = out / (target + "-")  # libFuzzer adds crash-, timeout-, oom-, leak-
    argv = [sys.executable, str(HERE / "fuzz.py"), target, str(core), str(work),
            *map(str, corpus_dirs(target)),
            "-max_len=%d" % max_len, "-timeout=30", "-rss_limit_mb=3072",
            "-dict=%s" % (HERE / "fastcgi.dict"), "-artifact_prefix=%s" % prefix,
            "-print_final_stats=1"]
    argv.append("-max_total_time=%d" % seconds if seconds else "-atheris_runs=%d" % runs)
    env = {**os.environ, **ENV,
           "LD_PRELOAD": os.path.join(atheris.path(), "asan_with_fuzzer.so")}
    if pymalloc:
        del env["PYTHONMALLOC"]
    log = out / (target + ".log")
    start = time.monotonic()
    with open(log, "wb") as f:
        code = subprocess.call(["nice", "-n", "19"] + argv, stdout=f, stderr=subprocess.STDOUT,
                               env=env)
    took = time.monotonic() - start
    text = log.read_text(errors="replace")
    # libFuzzer's final stats after a time limit; atheris's own line after -atheris_runs.
    done = re.findall(r"stat::number_of_executed_units:\s*(\d+)|^Done (\d+) in", text, re.M)
    done = [a or b for a, b in done]
    crashes = sorted(str(p) for kind in ("crash", "timeout", "oom", "leak")
                     for p in out.glob("%s-%s-*" % (target, kind)))
    return code, int(done[-1]) if done else 0, took, crashes, log


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=int, help="time of all targets together (default 60)")
    p.add_argument("--runs", type=int, help="inputs per target instead of a time")
    p.add_argument("--target", choices=TARGETS + ("all",), default="all")
    p.add_argument("--max-len", type=int, default=MAX_LEN, help="longest input (bytes)")
    p.add_argument("--pymalloc", action="store_true",
                   help="keep pymalloc: twice the speed; ASan then sees only malloc'd memory "
                        "(the codec's buffers), not small Python objects")
    p.add_argument("--out", type=Path, help="default: a new directory in $TMPDIR")
    args = p.parse_args()
    if args.seconds is None and args.runs is None:
        args.seconds = 60
    targets = TARGETS if args.target == "all" else (args.target,)
    out = args.out or Path(tempfile.mkdtemp(prefix="pyfpm-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(HERE))
    import build
    core = build.build(HERE.parents[1] / "build" / "fuzz")
    failed = False
    for target in targets:
        seconds = max(1, args.seconds // len(targets)) if args.runs is None else None
        code, runs, took, crashes, log = fuzz(target, core, out, seconds, args.runs, args.max_len,
                                             args.pymalloc)
        print("fuzz %s: %d inputs in %.0f s (%.0f/s), exit %d, %d crash%s; log %s"
              % (target, runs, took, runs / took if took else 0, code, len(crashes),
                 "" if len(crashes) == 1 else "es", log), flush=True)
        if code or crashes:
            failed = True
            tail = log.read_text(errors="replace").splitlines()[-60:]
            print("\n".join(tail), file=sys.stderr)
            for crash in crashes:
                print("fuzz %s: crashing input saved: %s (replay: python tests/fuzz/replay.py %s %s)"
                      % (target, crash, target, crash), file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
