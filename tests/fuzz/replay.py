"""Run fuzz inputs through a target's check once each, with the tree's own compiled core.

    python tests/fuzz/replay.py codec|request FILE_OR_DIR...

Prints each input that fails with its error and exits 1 if any did: how a crash that
run.py saved is looked at, and how tests/fuzz/test_corpus.py replays the corpus. To
replay under the sanitizers instead, give the input to fuzz.py as run.py starts it
(libFuzzer runs a file given in place of a corpus directory once).
"""

import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]


def inputs(args):
    for arg in map(Path, args):
        yield from (sorted(p for p in arg.iterdir() if p.is_file()) if arg.is_dir() else [arg])


def main():
    check = __import__(sys.argv[1] + "_check").check
    failed = 0
    for path in inputs(sys.argv[2:]):
        try:
            check(path.read_bytes())
        except Exception:  # noqa: BLE001 - every failure is reported, then the next input
            failed += 1
            print("FAILED %s\n%s" % (path, traceback.format_exc()), file=sys.stderr)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
