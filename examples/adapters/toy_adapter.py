#!/usr/bin/env python3
"""A chaos client adapter in Python: JSON lines on stdin, one answer per line on stdout.

The "system" here is a directory of files (TOY_STORE): a register is a file holding JSON, a set
a file with one JSON element per line. Replace the file calls with calls to your system.
"""
import json, os, sys

root = os.environ.get("TOY_STORE", ".")


def perform(req):
    kind, path = req["kind"], os.path.join(root, req.get("key") or "ids")
    if kind == "write":
        tmp = f"{path}.{os.getpid()}.tmp"  # this process's own: a shared name tears values
        with open(tmp, "w") as f:
            json.dump(req["value"], f)
        os.replace(tmp, path)  # atomic: a reader sees the old or the new value
        return {"outcome": "ok"}
    if kind == "read":
        if not os.path.exists(path):
            return {"outcome": "ok", "value": None}  # null: absent
        with open(path) as f:
            return {"outcome": "ok", "value": json.load(f)}
    if kind == "add":
        with open(path + ".set", "a") as f:
            f.write(json.dumps(req["value"]) + "\n")
        return {"outcome": "ok"}
    if kind == "read_set":
        if not os.path.exists(path + ".set"):
            return {"outcome": "ok", "value": []}
        with open(path + ".set") as f:
            return {"outcome": "ok", "value": [json.loads(l) for l in f if l.strip()]}
    return {"outcome": "fail", "error": f"kind {kind} is not offered"}


for line in sys.stdin:
    req = json.loads(line)
    try:
        answer = perform(req)
    except OSError as e:  # the write may or may not have happened: say so
        answer = {"outcome": "unknown", "error": str(e)}
    answer["id"] = req["id"]
    print(json.dumps(answer), flush=True)
