"""Run the reliability suite and print its figures: the README's Reliability section, made.

    python scripts/reliability_report.py            # prints the figures; last line is JSON
    python scripts/reliability_report.py --readme   # ... and rewrites them into README.md

It runs ``python -m pytest tests/reliability`` with ``TETHER_RELIABILITY_REPORT`` set, so each
part of the suite writes what it measured (fuzz cases, probes tried, the shutdown's timings,
every fault-simulation seed) next to a JUnit file of test outcomes, and summarises those.
Nothing in the output is typed in by hand. Exits non-zero if any reliability test failed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- reliability:begin -->", "<!-- reliability:end -->"


def run_suite(prefix: str) -> tuple[int, dict[str, Any]]:
    """Run tests/reliability; the exit code and the JUnit totals per test file."""
    env = {**os.environ, "TETHER_RELIABILITY_REPORT": prefix}
    junit = f"{prefix}.junit.xml"
    code = subprocess.call(
        [sys.executable, "-m", "pytest", "tests/reliability", "-p", "no:cacheprovider",
         f"--junitxml={junit}"], cwd=ROOT, env=env)
    outcomes: dict[str, Any] = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = case.get("classname", "").rpartition(".")[2] or "?"
        row = outcomes.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0})
        kinds = {child.tag for child in case}
        key = ("failed" if kinds & {"failure", "error"} else
               "skipped" if "skipped" in kinds else "passed")
        row[key] += 1
        row["seconds"] += float(case.get("time", 0))
    return code, outcomes


def _load(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def collect(prefix: str) -> dict[str, Any]:
    base = Path(prefix)
    faults = [json.loads(p.read_text())
              for p in sorted(base.parent.glob(base.name + ".faults.*.json"))]
    return {"fuzz": _load(Path(f"{prefix}.fuzz.json")),
            "probes": _load(Path(f"{prefix}.probes.json")),
            "shutdown": _load(Path(f"{prefix}.shutdown.json")),
            "faults": sorted(faults, key=lambda f: f["seed"])}


def _n(value: int) -> str:
    return f"{value:,}"


def render(figures: dict[str, Any], outcomes: dict[str, Any]) -> list[str]:
    """The figures as markdown lines (what goes between the README's markers)."""
    lines = ["Produced by `python scripts/reliability_report.py --readme` (runs "
             "`python -m pytest tests/reliability`, which CI runs as part of the suite).", ""]
    tests = {k: v for k, v in sorted(outcomes.items())}
    lines.append("| part | tests passed | failed | seconds |")
    lines.append("|---|---|---|---|")
    for name, row in tests.items():
        lines.append(f"| `{name}` | {row['passed']} | {row['failed']} | {row['seconds']:.0f} |")
    lines.append("")
    fuzz = figures["fuzz"]
    if fuzz:
        statuses = ", ".join(f"{k}: {_n(v)}" for k, v in sorted(fuzz["statuses"].items()))
        lines.append(
            f"- **API fuzzing** (Schemathesis from the served `/openapi.json`, "
            f"{fuzz['operations']} operations: every one but the document itself, which it "
            f"reads as the schema; authenticated, seed {fuzz['seed']}): "
            f"**{_n(fuzz['cases'])} cases, {fuzz['failures']} failures**. Statuses: {statuses}.")
    probes = figures["probes"]
    if probes:
        failed = tests.get("test_probes", {}).get("failed", 0)
        lines.append(
            f"- **Security probes**: **{_n(probes['probes'])} probes** of "
            f"{len(probes['by_kind'])} kinds, {failed} failed tests; every probe counted got "
            "its 4xx envelope, protocol error frame or refusal, none a 500 or a server error "
            "in the log.")
        groups: dict[str, list[str]] = {}
        for kind, count in sorted(probes["by_kind"].items()):
            group, _, detail = kind.partition(": ")
            groups.setdefault(group if detail else "other", []).append(
                f"{detail or kind} {_n(count)}")
        for group, items in groups.items():
            lines.append(f"  - {group}: " + ", ".join(items) + ".")
    shutdown = figures["shutdown"]
    if shutdown:
        code, reason = shutdown["agent_close"]
        lines.append(
            f"- **Graceful shutdown** (a real `tether serve`, SIGTERM, "
            f"`--drain-timeout {shutdown['drain_timeout']:g}`): exit code "
            f"{shutdown['exit_code']} after {shutdown['seconds_to_exit']} s; the agent got "
            f"close {code} `{reason}`; {shutdown['sessions_ended_server_shutdown']} sessions "
            f"ended `server_shutdown`, {shutdown['terminal_events_at_webhook']} terminal "
            "events reached the webhook receiver before the exit.")
    faults = figures["faults"]
    if faults:
        seeds = ", ".join(f"{f['seed']} ({_n(f['agents'])} agents)" for f in faults)
        totals: dict[str, int] = {}
        for f in faults:
            for k, v in f["faults"].items():
                totals[k] = totals.get(k, 0) + v
        hooks: dict[str, dict[str, int]] = {}
        for f in faults:
            for name, row in f.get("webhooks", {}).items():
                into = hooks.setdefault(name, {})
                for k, v in row.items():
                    into[k] = into.get(k, 0) + v
        violations = sum(f["violations"] for f in faults)
        lines.append(
            f"- **Fault simulation** (`tether.sim.faults`, MockClock): seeds {seeds}; "
            f"{_n(sum(f['sessions'] for f in faults))} sessions, "
            f"{_n(sum(f['events'] for f in faults))} events, "
            f"**{_n(sum(totals.values()))} faults injected, {violations} invariant "
            f"violations**; after retention, "
            f"{sum(f.get('left_in_memory', 0) for f in faults)} session records, actors or "
            "links left in memory.")
        lines.append("  Faults: " + ", ".join(f"{k} {_n(v)}" for k, v in sorted(
            totals.items())) + ".")
        if hooks:
            lines.append("  Webhook receivers: " + "; ".join(
                f"{name}: {_n(row['accepted'])} accepted, {_n(row['failed'])} recorded failed"
                + (", disabled" if row["disabled"] else "")
                for name, row in sorted(hooks.items())) + ".")
    return [wrapped for line in lines for wrapped in _wrap(line)]


def _wrap(line: str, width: int = 96) -> list[str]:
    """Markdown paragraphs and list items wrapped (tables are left alone)."""
    if len(line) <= width or line.startswith("|"):
        return [line]
    stripped = line.lstrip(" ")
    indent = " " * (len(line) - len(stripped) + (2 if stripped.startswith("- ") else 0))
    return textwrap.wrap(line, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)


def write_readme(lines: list[str]) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block")
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    readme.write_text(head + BEGIN + "\n" + "\n".join(lines) + "\n" + END + tail)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--readme", action="store_true",
                        help="rewrite README.md's Reliability figures with this run's")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "rel")
        code, outcomes = run_suite(prefix)
        figures = collect(prefix)
    lines = render(figures, outcomes)
    print("\n".join(lines))
    if args.readme:
        if code != 0:
            print("reliability tests failed: README.md left as it was", file=sys.stderr)
        else:
            write_readme(lines)
    summary = {
        "tests_failed": sum(r["failed"] for r in outcomes.values()),
        "fuzz_cases": (figures["fuzz"] or {}).get("cases"),
        "fuzz_failures": (figures["fuzz"] or {}).get("failures"),
        "probes": (figures["probes"] or {}).get("probes"),
        "fault_seeds": [f["seed"] for f in figures["faults"]],
        "faults_injected": sum(sum(f["faults"].values()) for f in figures["faults"]),
        "invariant_violations": sum(f["violations"] for f in figures["faults"]),
    }
    print(json.dumps(summary))
    return code


if __name__ == "__main__":
    sys.exit(main())
