#!/usr/bin/env python3
# scripts/make_demo_trace.py: makes tests/data/demo-trace.json.gz, the small trace the project ships.
#
# It is the first training steps of a shared trace (default: the first 2 of gpt2m-ckpt-varlen), in the
# same format (see /work/shared/traces/README.md). A step ends where the live bytes come back to the level
# that holds between steps (weights + optimizer state): the minimum of the live bytes after the first
# eighth of the events. meta is kept, with peak_live_bytes recomputed for the cut, iters set to the steps
# kept, and peak_reserved_pytorch_native dropped (it was measured over the whole job, not the cut).
# The output is deterministic (compact JSON, gzip mtime 0), so regenerating gives the same bytes.
#
#   scripts/make_demo_trace.py [--source TRACE.json.gz] [--steps N] [--out tests/data/demo-trace.json.gz]
import argparse
import gzip
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--source', default=os.path.join(ROOT, '..', 'shared', 'traces', 'gpt2m-ckpt-varlen.json.gz'))
    ap.add_argument('--steps', type=int, default=2)
    ap.add_argument('--out', default=os.path.join(ROOT, 'tests', 'data', 'demo-trace.json.gz'))
    args = ap.parse_args()

    with gzip.open(args.source, 'rt') as f:
        src = json.load(f)
    events = src['events']
    size_of = {a: s for a, s in src['live_at_start']}
    live = sum(size_of.values())
    after = []  # live bytes after each event
    for _t, op, addr, size, _stream in events:
        if op == 'a':
            size_of[addr] = size
            live += size
        else:
            live -= size_of.pop(addr)
        after.append(live)

    floor = min(after[len(after) // 8:])
    ends = [i for i in range(len(after)) if after[i] == floor and (i + 1 == len(after) or after[i + 1] > floor)]
    if len(ends) < args.steps:
        sys.exit(f'{args.source}: found only {len(ends)} step ends, asked for {args.steps}')
    cut = ends[args.steps - 1] + 1
    kept = events[:cut]

    live = sum(s for _a, s in src['live_at_start'])
    peak = live
    for _t, op, _addr, size, _stream in kept:
        live += size if op == 'a' else -size
        peak = max(peak, live)

    meta = dict(src['meta'])
    full_name = meta.get('name', os.path.basename(args.source))
    meta['name'] = f'{full_name}-{args.steps}steps'
    meta['iters'] = args.steps
    meta['peak_live_bytes'] = peak
    meta.pop('peak_reserved_pytorch_native', None)
    meta['cut'] = (f'the first {args.steps} steps (events[:{cut}] of {len(events)}) of {full_name}, made by '
                   f'scripts/make_demo_trace.py; peak_live_bytes recomputed; peak_reserved_pytorch_native '
                   f'dropped (measured over the whole job)')
    out = {'meta': meta, 'live_at_start': src['live_at_start'], 'events': kept}
    text = json.dumps(out, separators=(',', ':')).encode()
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'wb') as f:
        f.write(gzip.compress(text, compresslevel=9, mtime=0))
    print(f'{args.out}: {cut} events, peak live {peak} bytes, {os.path.getsize(args.out)} bytes compressed')


if __name__ == '__main__':
    main()
