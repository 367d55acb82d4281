"""List the registered components of each group, with the package providing each."""

from __future__ import annotations

import argparse

from dlm.registry import GROUPS, check_entry, entries

HELP = "list components per group and their providers"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-check", action="store_true", help="do not import components to check that they load")


def run(args: argparse.Namespace) -> int:
    for kind, group in GROUPS.items():
        print(f"{kind} ({group}):")
        found = entries(kind)
        if not found:
            print("  (none)")
        for entry in found.values():
            problem = None if args.no_check else check_entry(entry)
            status = f"  BROKEN: {problem}" if problem else ""
            print(f"  {entry.name:<18} {', '.join(entry.providers)}{status}")
    return 0
