"""Reading what a device session of bench/stage.sh stages left in its OUT_DIR; shared by the summaries
(bench/pruning/summarize.py, bench/zoo_compare.py). A file that is missing reads as the default, never as a number.
"""
import json
import os
import re


def read(path, default=None):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return default


def load_json(path):
    text = read(path)
    return json.loads(text) if text else None


def stage_results(out):
    """{stage: (exit status, wall seconds)} from OUT/stages.txt (rc 125: skipped for the deadline)."""
    results = {}
    for line in read(os.path.join(out, "stages.txt"), "").splitlines():
        m = re.match(r"(\S+)\s+rc=(\d+)\s+([\d.]+) s", line)
        if m:
            results[m.group(1)] = (int(m.group(2)), float(m.group(3)))
    return results
