"""A task that does nothing, for the job benchmarks (the Fractal task CLI contract).

``python trivial_task.py --args-json A --out-json B`` reads its arguments from A and writes
no output (a missing out-json means "no changes to the image list"). Standard library only,
so each call costs a bare interpreter start.
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--args-json", required=True)
    parser.add_argument("--out-json", required=True)
    args = parser.parse_args()
    with open(args.args_json, encoding="utf-8") as handle:
        json.load(handle)


if __name__ == "__main__":
    main()
