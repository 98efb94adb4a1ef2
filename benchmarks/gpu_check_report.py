"""Bookkeeping of benchmarks/gpu_check.sh: test counts, the summary (table + summary.json), the output rules.

  python benchmarks/gpu_check_report.py collected LOG [EXPECTED]   tests collected by `pytest --collect-only`:
                                                                   fails on a collection error, or a count
                                                                   other than EXPECTED (a number, or
                                                                   pytest's own 'N/M tests collected' line)
  python benchmarks/gpu_check_report.py summary STEPS WORK OUT     summary.json in OUT and a table on stdout,
                                                                   from STEPS (name, exit code, seconds per
                                                                   line) and the JUnit XML files in WORK;
                                                                   exits 1 if a step failed or was skipped
  python benchmarks/gpu_check_report.py outputs OUT                OUT holds at most 8 files, 2 folders deep,
                                                                   16 MiB each (what the GPU machine returns)
"""
from __future__ import annotations

import json
import os
import re
import sys
import xml.etree.ElementTree as ET

MAX_FILES = 8
MAX_DEPTH = 2  # folders below OUT
MAX_BYTES = 16 * 1024 * 1024


def collected_count(text: str) -> tuple[int | None, int]:
    """(tests selected, collection errors) from pytest's closing line of --collect-only."""
    errors = re.search(r"(\d+) errors?\b", text)
    count = re.search(r"(\d+)(?:/\d+)? tests? collected", text)
    if count is not None:
        selected = int(count.group(1))
    else:
        selected = 0 if "no tests collected" in text else None
    return selected, (int(errors.group(1)) if errors else 0)


def cmd_collected(log: str, expected: str | None = None) -> int:
    with open(log) as f:
        got, errors = collected_count(f.read())
    want = None
    if expected:
        want = int(expected) if expected.strip().isdigit() else collected_count(expected)[0]
    print(f"collected {got} tests, {errors} collection errors" + (f" (expected {want})" if want is not None else ""))
    if got is None or errors:
        return 1
    return 1 if want is not None and got != want else 0


def junit_counts(path: str) -> dict[str, int]:
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    total["passed"] = total["tests"] - total["failures"] - total["errors"] - total["skipped"]
    return total


def cmd_summary(steps_file: str, work: str, out: str) -> int:
    rows = []
    with open(steps_file) as f:
        for line in f:
            name, rc, seconds = line.rstrip("\n").split("\t")
            row = {"step": name, "exit": rc, "seconds": int(seconds),
                   "status": "ok" if rc == "0" else ("skipped" if rc == "skipped" else
                                                     "timed out" if rc in ("124", "137") else "failed")}
            xml = os.path.join(work, f"{name}.xml")
            if os.path.exists(xml):
                try:
                    row["tests"] = junit_counts(xml)
                except ET.ParseError as exc:
                    row["tests_error"] = str(exc)
            rows.append(row)
    ok = all(r["status"] == "ok" for r in rows)
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump({"ok": ok, "steps": rows}, f, indent=1)
    print(f"{'step':24s} {'status':10s} {'s':>5s}  tests (passed / failed / errors / skipped)")
    for r in rows:
        t = r.get("tests")
        tests = f"{t['passed']} / {t['failures']} / {t['errors']} / {t['skipped']}" if t else ""
        print(f"{r['step']:24s} {r['status']:10s} {r['seconds']:5d}  {tests}")
    failed = ", ".join(r["step"] for r in rows if r["status"] != "ok")
    print(f"gpu_check: {'every step passed' if ok else 'FAILED: ' + failed}")
    return 0 if ok else 1


def cmd_outputs(out: str) -> int:
    files, problems = [], []
    for dirpath, _dirnames, filenames in os.walk(out):
        depth = os.path.relpath(dirpath, out).count(os.sep) + (dirpath != out)
        for name in filenames:
            path = os.path.join(dirpath, name)
            files.append(path)
            if depth > MAX_DEPTH:
                problems.append(f"{path} is {depth} folders deep (at most {MAX_DEPTH})")
            if os.path.islink(path) or not os.path.isfile(path):
                problems.append(f"{path} is not a plain file")
            elif os.path.getsize(path) > MAX_BYTES:
                problems.append(f"{path} has {os.path.getsize(path)} bytes (at most {MAX_BYTES})")
    if len(files) > MAX_FILES:
        problems.append(f"{len(files)} files (at most {MAX_FILES})")
    print(f"outputs: {len(files)} files in {out}: {', '.join(sorted(os.path.relpath(p, out) for p in files))}")
    for p in problems:
        print(f"outputs: {p}")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    commands = {"collected": (cmd_collected, (1, 2)), "summary": (cmd_summary, (3, 3)),
                "outputs": (cmd_outputs, (1, 1))}
    if not argv or argv[0] not in commands or not commands[argv[0]][1][0] <= len(argv) - 1 <= commands[argv[0]][1][1]:
        print(__doc__, file=sys.stderr)
        return 2
    return commands[argv[0]][0](*argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
