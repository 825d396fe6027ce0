"""Record the parameters of every registered network at its default config, for `rtgen models`.

    python scripts/parameter_counts.py          # rewrite rtgen/models/parameter_counts.json
    python scripts/parameter_counts.py --check  # exit 1 if the file differs from the networks

`rtgen models` reads the counts from that file instead of importing PyTorch and building every
network (seconds); tests/test_cli_fast.py checks each count against the built network, so run this
after changing a network or its config defaults.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rtgen.core.registry import parameter_counts

TABLE = Path(__file__).resolve().parents[1] / "rtgen" / "models" / "parameter_counts.json"


def table_text() -> str:
    counts = parameter_counts()
    note = "written by scripts/parameter_counts.py: parameters of each registered network at its default config"
    return json.dumps({"note": note, "parameters": counts}, indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if the file is stale")
    args = parser.parse_args()
    text = table_text()
    if args.check:
        stale = not TABLE.is_file() or TABLE.read_text() != text
        print(f"{TABLE.name}: {'stale: run python scripts/parameter_counts.py' if stale else 'up to date'}")
        return int(stale)
    TABLE.write_text(text)
    print(f"wrote {TABLE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
