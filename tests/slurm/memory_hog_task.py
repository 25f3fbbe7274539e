"""A non-parallel task (Fractal task contract: --args-json / --out-json) that takes far more
memory than its ``mem`` and holds it: SLURM's memory enforcement must stop it.

Stdlib only: it is run as a plain script by the cluster user's Python.
"""

import argparse
import json
import sys
import time

parser = argparse.ArgumentParser()
parser.add_argument("--args-json", required=True)
parser.add_argument("--out-json", required=True)
ns = parser.parse_args()
with open(ns.args_json, encoding="utf-8") as handle:
    args = json.load(handle)
print(f"memory hog: taking {args['megabytes']} MB", flush=True)
print("memory hog: on stderr too", file=sys.stderr, flush=True)
hog = b"x" * (int(args["megabytes"]) * 2**20)
time.sleep(60)  # SLURM samples a step's memory every second (deploy/local)
with open(ns.out_json, "w", encoding="utf-8") as handle:  # never reached under enforcement
    json.dump({}, handle)
