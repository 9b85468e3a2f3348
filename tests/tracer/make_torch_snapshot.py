#!/usr/bin/env python3
"""tests/tracer/make_torch_snapshot.py: writes a small PyTorch memory snapshot pickle for the tests.

It has the structure torch.cuda.memory._dump_snapshot writes (torch 2.x: "segments" with "blocks",
"device_traces" with alloc/free_requested/free_completed/segment_alloc/segment_free/oom entries,
"time_us", frames as {filename, line, name}), builtin types only, and no torch import. What the test
expects of its conversion is printed as JSON on stdout.

usage: make_torch_snapshot.py OUT.pickle [--bad-class]
"""
import json
import pickle
import sys

MiB = 1 << 20
SEG0 = 0x7F0000000000        # a segment from before the history: weights live in it
SEG1 = 0x7F0000000000 + 64 * MiB  # a segment the history allocates

PY = [{'filename': '/work/train.py', 'line': 42, 'name': 'forward'},
      {'filename': '/work/train.py', 'line': 88, 'name': 'step'}]
CPP = [{'filename': '??', 'line': 0, 'name': 'c10::cuda::CUDACachingAllocator::malloc'},
       {'filename': 'Python/ceval.c', 'line': 1, 'name': '_PyEval_EvalFrameDefault'}]


def e(action, addr, size, t, frames=None, **kw):
    d = {'action': action, 'addr': addr, 'size': size, 'stream': 0, 'time_us': t, 'frames': frames or []}
    d.update(kw)
    return d


def main():
    out = sys.argv[1]
    bad = '--bad-class' in sys.argv[2:]
    weights = SEG0                 # 8 MiB, allocated before the history, live at the end
    early = SEG0 + 8 * MiB         # 2 MiB, allocated before the history, freed in it
    trace = [
        e('segment_alloc', SEG1, 20 * MiB, 1000),
        e('alloc', SEG1, 4 * MiB, 1010, CPP + PY),
        e('alloc', SEG1 + 4 * MiB, 6 * MiB, 1020, CPP + PY[1:]),
        e('free_requested', SEG1, 4 * MiB, 1030),
        e('free_completed', SEG1, 4 * MiB, 1031),
        e('free_requested', early, 2 * MiB, 1040),
        e('free_completed', early, 2 * MiB, 1041),
        e('alloc', SEG1, 2 * MiB, 1050, PY),
        e('oom', 0, 40 * MiB, 1060, PY, device_free=3 * MiB),
        e('snapshot', 0, 0, 1070),
    ]
    segments = [
        {'device': 0, 'address': SEG0, 'total_size': 20 * MiB, 'allocated_size': 8 * MiB, 'active_size': 8 * MiB,
         'requested_size': 8 * MiB, 'stream': 0, 'segment_type': 'large', 'segment_pool_id': (0, 0),
         'is_expandable': False, 'frames': [],
         'blocks': [{'address': weights, 'size': 8 * MiB, 'requested_size': 8 * MiB - 100,
                     'state': 'active_allocated', 'frames': [{'filename': '/work/model.py', 'line': 7,
                                                              'name': 'load_weights'}]},
                    {'address': SEG0 + 8 * MiB, 'size': 12 * MiB, 'requested_size': 0, 'state': 'inactive',
                     'frames': []}]},
        # An old-format segment: blocks without addresses (offsets follow from the sizes).
        {'device': 0, 'address': SEG1, 'total_size': 20 * MiB, 'allocated_size': 8 * MiB, 'active_size': 8 * MiB,
         'requested_size': 8 * MiB, 'stream': 0, 'segment_type': 'large', 'segment_pool_id': (0, 0),
         'is_expandable': False, 'frames': [],
         'blocks': [{'size': 2 * MiB, 'requested_size': 2 * MiB, 'state': 'active_allocated', 'frames': PY},
                    {'size': 2 * MiB, 'requested_size': 0, 'state': 'inactive'},
                    {'size': 6 * MiB, 'requested_size': 6 * MiB, 'state': 'active_allocated', 'frames': PY},
                    {'size': 10 * MiB, 'requested_size': 0, 'state': 'inactive'}]},
    ]
    snap = {'segments': segments, 'device_traces': [trace], 'allocator_settings': {'expandable_segments': False}}
    if bad:
        import collections
        snap['extra'] = collections.Counter(a=1)  # a class: the converter must refuse it
    with open(out, 'wb') as f:
        pickle.dump(snap, f)
    expect = {
        'events': 7,  # segment_alloc, 3 alloc, 2 free_requested, oom (free_completed, snapshot skipped)
        'allocs': 3, 'frees': 2,
        'live_at_start': [[early, 2 * MiB], [weights, 8 * MiB]],
        'peak_live_bytes': 8 * MiB + 2 * MiB + 4 * MiB + 6 * MiB,
        'physical_at_start_bytes': 20 * MiB,
        'peak_reserved_pytorch_native': 40 * MiB,
    }
    print(json.dumps(expect))


if __name__ == '__main__':
    main()
