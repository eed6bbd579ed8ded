#!/usr/bin/env python3
"""Compares PAN findings of tokengate scan, PANhunt and ripgrep against the
ground truth written by `examples/gen_corpus.rs` (docs/BENCHMARKS.md).

    compare.py --truth T.tsv --tokengate TG.jsonl --panhunt PH.json --rg RG.tsv

Every input is masked (BIN6 + stars + last4). ripgrep prints whole numbers, so
its output is masked on the way in by `compare.py mask-rg` (reads
`path:line:match` from stdin, keeps Luhn-valid 13-19 digit matches, writes
`path<TAB>line<TAB>masked`): no full number is ever stored.

Matching is by (file, masked number); per-line for tokengate and ripgrep,
per-file counts for PANhunt (its report has no line numbers).
"""
import argparse
import collections
import json
import sys


def luhn_ok(d):
    total = 0
    for i, c in enumerate(reversed(d)):
        n = ord(c) - 48
        if i % 2:
            n *= 2
            if n > 9:
                n -= 9
        total += n
    return total % 10 == 0


def mask(d):
    return d[:6] + "*" * (len(d) - 10) + d[-4:]


def mask_rg():
    out = sys.stdout
    for raw in sys.stdin.buffer:
        line = raw.decode("utf-8", "replace").rstrip("\n")
        path, lineno, match = line.split(":", 2)
        digits = "".join(c for c in match if c.isdigit())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            out.write(f"{path}\t{lineno}\t{mask(digits)}\n")


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "mask-rg":
        mask_rg()
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--truth", required=True)
    ap.add_argument("--tokengate", required=True)
    ap.add_argument("--panhunt")
    ap.add_argument("--rg")
    a = ap.parse_args()

    truth = set()
    for l in open(a.truth):
        p, n, m, *_ = l.rstrip("\n").split("\t")
        truth.add((p, int(n), m))
    tg = set()
    for l in open(a.tokengate):
        j = json.loads(l)
        tg.add((j["path"], j["line"], j["masked"]))

    def report(name, found):
        hit = found & truth
        print(f"{name}: {len(found)} findings, {len(hit)} of {len(truth)} planted "
              f"(recall {len(hit) / max(len(truth), 1):.4f}), {len(found - truth)} not planted")

    report("tokengate", tg)
    if a.rg:
        rg = set()
        for l in open(a.rg):
            p, n, m = l.rstrip("\n").split("\t")
            rg.add((p, int(n), m))
        report("ripgrep+Luhn", rg)
        lost = (rg & truth) - tg
        print(f"  planted numbers ripgrep found and tokengate missed: {len(lost)}")
        for x in sorted(lost)[:10]:
            print("   ", x)
    if a.panhunt:
        ph = json.load(open(a.panhunt))
        ph_counts = collections.Counter()
        for path, items in ph.get("pans_found_results", {}).items():
            for it in items:
                ph_counts[(path, it.split(":", 1)[1])] += 1
        truth_counts = collections.Counter((p, m) for p, _, m in truth)
        tg_counts = collections.Counter((p, m) for p, _, m in tg)
        ph_total = sum(ph_counts.values())
        ph_hit = sum(min(c, truth_counts[k]) for k, c in ph_counts.items())
        print(f"PANhunt: {ph_total} findings, {ph_hit} of {len(truth)} planted "
              f"(recall {ph_hit / max(len(truth), 1):.4f}), {ph_total - ph_hit} not planted")
        lost = sum(max(0, min(c, truth_counts[k]) - tg_counts[k]) for k, c in ph_counts.items())
        print(f"  planted numbers PANhunt found and tokengate missed: {lost}")
    missed = truth - tg
    styles = collections.Counter()
    for l in open(a.truth):
        p, n, m, brand, style = l.rstrip("\n").split("\t")
        if (p, int(n), m) in missed:
            styles[(brand, style)] += 1
    if missed:
        print("tokengate missed (brand, style):", dict(styles))


if __name__ == "__main__":
    main()
