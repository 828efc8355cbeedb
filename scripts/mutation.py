"""Mutation testing of the modules where a one-line slip is a security or delivery failure (issue 20).

    .venv/bin/python scripts/mutation.py [--since REV] [--limit N] [--strict] [MODULE ...]

cosmic-ray (PyPI) makes each mutant (an operator swapped, a comparison turned, a constant changed, a condition
negated...) in the file on disk, runs the module's tests, and restores the file. Chosen over mutmut because it
mutates in place: the tests start the milter, its crypto workers and Postfix's helpers as separate processes,
which import the package from disk; mutmut's mutants live in a copy of the tree and its trampolines select them
per process. Each module is tested with the tests that exercise it (``TESTS``, fast ones first, stopping at the
first failure), so a mutant costs seconds, not the whole suite.

Mutants that cannot change behaviour are not run: those inside annotations (``from __future__ import
annotations`` never evaluates them) and those listed in ``EQUIVALENT`` with the reason. ``--since REV``: only
mutants on lines changed since REV (what CI runs, after the suite: ``--since HEAD~1 --limit 20 --budget 180``).
The report lists the survivors (a test to write, or an equivalent mutant to list); ``--strict`` makes survivors
fail the run. Without modules: every module of ``TESTS``, which takes hours; name one to work on it.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cosmic_ray.work_db import WorkDB, use_db
from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

ROOT = Path(__file__).resolve().parent.parent
PYTEST = f"{sys.executable} -m pytest -x -q -p no:cacheprovider -p no:randomly"

#: Module -> the tests that exercise it, fast ones first.
TESTS: dict[str, list[str]] = {
    "directmilter/trust/validator.py": ["tests/test_trust.py", "tests/test_revocation_support.py",
                                        "tests/test_budget.py", "tests/test_revocation.py"],
    "directmilter/trust/binding.py": ["tests/test_trust.py", "tests/test_agent.py", "tests/test_tamper.py"],
    "directmilter/certfacts.py": ["tests/test_trust.py", "tests/test_config.py", "tests/test_certificate_policy.py",
                                  "tests/test_key_usage_policy.py", "tests/test_memo.py", "tests/test_discovery.py"],
    "directmilter/trust/fetching.py": ["tests/test_trust_fetching.py", "tests/test_revocation.py",
                                       "tests/test_budget.py"],
    "directmilter/trust/certificate_policy.py": ["tests/test_certificate_policy.py", "tests/test_key_usage_policy.py"],
    "directmilter/agent/trust_model.py": ["tests/test_agent.py", "tests/test_key_usage_policy.py",
                                          "tests/test_tamper.py", "tests/test_budget.py",
                                          "tests/test_certificate_policy.py", "tests/test_revocation.py"],
    "directmilter/agent/incoming.py": ["tests/test_routing.py", "tests/test_agent.py", "tests/test_key_usage_policy.py",
                                       "tests/test_budget.py", "tests/test_tamper.py", "tests/test_interop.py",
                                       "tests/test_milter_postfix.py"],
    "directmilter/agent/outgoing.py": ["tests/test_agent.py", "tests/test_interop.py", "tests/test_discovery.py"],
    "directmilter/cms/signed.py": ["tests/test_ber.py", "tests/test_tamper.py", "tests/test_interop.py"],
    "directmilter/cms/enveloped.py": ["tests/test_hostile.py", "tests/test_tamper.py", "tests/test_interop.py"],
    "directmilter/budget.py": ["tests/test_budget.py"],
    "directmilter/witness.py": ["tests/test_commit_witness.py"],
    "directmilter/policy.py": ["tests/test_actions.py"],
    "directmilter/notify/mdn.py": ["tests/test_notify.py", "tests/test_confirmation.py"],
    "directmilter/delivery/service.py": ["tests/test_commit_witness.py", "tests/test_faults.py",
                                         "tests/test_confirmation.py"],
    "directmilter/milter/app.py": ["tests/test_milter_units.py", "tests/test_milter_postfix.py",
                                   "tests/test_commit_witness.py", "tests/test_confirmation.py"],
}

#: (module, line, operator) -> why the mutant cannot change behaviour.
EQUIVALENT: dict[tuple[str, int, str], str] = {
    ("directmilter/witness.py", 29, "core/NumberReplacer"):
        "WAIT is an hour, compared against a clock the tests move past it: any positive value behaves alike",
    ("directmilter/certfacts.py", 86, "core/RemoveDecorator"):
        "@kept(1024) keeps describe_certificate's answers (certificates are immutable): without it, the same text",
    ("directmilter/certfacts.py", 86, "core/NumberReplacer"):
        "the size of that cache: any size gives the same text",
    ("directmilter/trust/certificate_policy.py", 77, "core/ReplaceComparisonOperator_Eq_GtE"):
        "usage is one of any, dual, single (overridden() checks it): only 'single' is >= 'single'",
    ("directmilter/trust/certificate_policy.py", 104, "core/ReplaceComparisonOperator_NotEq_Gt"):
        "usage is one of any, dual, single: exactly the two that are not 'any' sort after it",
    ("directmilter/trust/certificate_policy.py", 144, "core/RemoveDecorator"):
        "@kept(1024) keeps _violation's answer per (immutable) policy and certificate: the same answers",
    ("directmilter/trust/certificate_policy.py", 144, "core/NumberReplacer"):
        "the size of that cache",
    ("directmilter/agent/incoming.py", 143, "core/ExceptionReplacer"):
        "defensive: the delivered message's header block was already parsed, with the same limits, when it was "
        "unwrapped (a 1,001-field one is refused there as malformed); _named cannot meet an unreadable one",
    ("directmilter/agent/incoming.py", 72, "core/ReplaceComparisonOperator_NotEq_IsNot"):
        "content indexes are small ints, one object per value: 'is not' is '!='",
    ("directmilter/agent/incoming.py", 45, "core/ReplaceComparisonOperator_IsNot_NotEq"):
        "two opened contents are equal only when they are the same spool file (or, in process, bytes that "
        "spool.remove ignores): '!=' removes what 'is not' removes",
    ("directmilter/agent/trust_model.py", 36, "core/ReplaceBinaryOperator_Mul_Div"):
        "'*' -> '/' makes the parameters before it positional-only: every caller passes them by position anyway",
    ("directmilter/agent/trust_model.py", 97, "core/RemoveDecorator"):
        "@kept(1024) keeps _not_for_email's answer per (immutable) certificate: the same answers",
    ("directmilter/agent/trust_model.py", 97, "core/NumberReplacer"):
        "the size of that cache",
    ("directmilter/agent/trust_model.py", 81, "core/RemoveDecorator"):
        "@kept(4096) keeps _unusable's answers per (certificate, address, policy), all immutable: the same answers",
    ("directmilter/agent/trust_model.py", 81, "core/NumberReplacer"):
        "the size of that cache: any size gives the same answers",
    ("directmilter/budget.py", 29, "core/ReplaceTrueWithFalse"):
        "frozen=True guards against a Deadline being changed; nothing assigns to one",
    ("directmilter/budget.py", 46, "core/ReplaceComparisonOperator_LtE_Lt"):
        "remaining() is a float difference of two clock readings: exactly 0.0 does not happen",
    ("directmilter/budget.py", 68, "core/ReplaceComparisonOperator_GtE_Eq"):
        "the count grows by one from 0 and is compared before each increment: it reaches the limit, never past it",
    ("directmilter/budget.py", 68, "core/ReplaceComparisonOperator_GtE_Is"):
        "as GtE_Eq, and small ints are one object each",
    ("directmilter/budget.py", 70, "core/ReplaceComparisonOperator_GtE_Eq"):
        "the per-host count grows by one from 0 and is compared before each increment",
    ("directmilter/budget.py", 70, "core/ReplaceComparisonOperator_GtE_Is"):
        "as GtE_Eq, and small ints are one object each",
}


def _annotation_lines(path: Path) -> set[int]:
    """Lines that hold only annotations (never evaluated here)."""
    lines: set[int] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotation = node.returns
        elif isinstance(node, (ast.arg, ast.AnnAssign)):
            annotation = node.annotation
        else:
            continue
        if annotation is not None:
            lines.update(range(annotation.lineno, (annotation.end_lineno or annotation.lineno) + 1))
    return lines


def _changed_lines(module: str, since: str) -> set[int]:
    diff = subprocess.run(["git", "diff", "-U0", since, "--", module], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    lines: set[int] = set()
    for line in diff.splitlines():
        if line.startswith("@@"):
            added = line.split("+", 1)[1].split(" ", 1)[0]
            start, _, count = added.partition(",")
            lines.update(range(int(start), int(start) + int(count or 1)))
    return lines


def _skip(db: WorkDB, module: str, since: str | None, limit: int) -> int:
    """Mark the mutants not to run as skipped; returns how many are left."""
    path = ROOT / module
    annotations = _annotation_lines(path)
    changed = _changed_lines(module, since) if since else None
    skipped, left = [], 0
    for item in db.pending_work_items:
        mutation = item.mutations[0]
        line = mutation.start_pos[0]
        if (line in annotations or (module, line, mutation.operator_name) in EQUIVALENT
                or (changed is not None and line not in changed) or left >= limit):
            skipped.append(item.job_id)
        else:
            left += 1
    if skipped:
        db.set_multiple_results(skipped, WorkResult(output="not run", worker_outcome=WorkerOutcome.SKIPPED))
    return left


def _run(module: str, since: str | None, limit: int, folder: Path) -> list[str]:
    """Mutate ``module``; returns the survivors, described."""
    if since and not _changed_lines(module, since):
        return []
    tests = " ".join(TESTS[module])
    config = folder / (module.replace("/", "_") + ".toml")
    config.write_text(f"""[cosmic-ray]
module-path = "{module}"
timeout = 300.0
excluded-modules = []
test-command = "{PYTEST} {tests}"

[cosmic-ray.distributor]
name = "local"
""")
    session = config.with_suffix(".sqlite")
    subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "init", str(config), str(session)], cwd=ROOT,
                   check=True, capture_output=True)
    with use_db(str(session), WorkDB.Mode.open) as db:
        left = _skip(db, module, since, limit)
    if left:
        subprocess.run([sys.executable, "-m", "cosmic_ray.cli", "exec", str(config), str(session)], cwd=ROOT,
                       check=True, capture_output=True)
    survivors = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.NORMAL and result.test_outcome == TestOutcome.SURVIVED:
                mutation = item.mutations[0]
                survivors.append(f"{module}:{mutation.start_pos[0]}: {mutation.operator_name} "
                                 f"#{mutation.occurrence}\n{result.diff}")
    print(f"{module}: {left} mutants run, {len(survivors)} survived", flush=True)
    return survivors


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"of: {', '.join(TESTS)}")
    parser.add_argument("--since", help="only mutants on lines changed since this git revision")
    parser.add_argument("--limit", type=int, default=10_000, help="at most this many mutants per module")
    parser.add_argument("--budget", type=float, default=None, help="start no module after this many seconds")
    parser.add_argument("--strict", action="store_true", help="fail when a mutant survives")
    args = parser.parse_args()
    unknown = [m for m in args.modules if m not in TESTS]
    if unknown:
        parser.error(f"no tests are named for {', '.join(unknown)} (see TESTS)")
    if args.since and subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{args.since}^{{commit}}"],
                                     cwd=ROOT, capture_output=True).returncode != 0:
        print(f"{args.since}: no such revision here (a shallow clone?): no changed lines to mutate")
        return 0
    started = time.monotonic()
    survivors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="directmilter-mutation-") as folder:
        for module in args.modules or list(TESTS):
            if args.budget is not None and time.monotonic() - started > args.budget:
                print(f"{module}: not run (--budget {args.budget:g} s spent)")
                continue
            survivors += _run(module, args.since, args.limit, Path(folder))
    for survivor in survivors:
        print(f"\nSURVIVED {survivor}")
    print(f"\n{len(survivors)} surviving mutants in {time.monotonic() - started:.0f} s")
    return 1 if survivors and args.strict else 0


if __name__ == "__main__":
    raise SystemExit(main())
