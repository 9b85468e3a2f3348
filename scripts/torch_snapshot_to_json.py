#!/usr/bin/env python3
"""scripts/torch_snapshot_to_json.py: a PyTorch memory snapshot -> a glake trace (tracer/FORMAT.md).

A PyTorch user learns what glake would save without a GPU:

    # in the job, on the GPU:
    torch.cuda.memory._record_memory_history(max_entries=1000000)
    ...
    torch.cuda.memory._dump_snapshot("snapshot.pickle")
    # anywhere (no torch, no GPU needed):
    glake-trace import --torch snapshot.pickle -o trace.json.gz     # runs this script
    glake-trace replay trace.json.gz                                # glake's peak vs PyTorch's
    glake-trace report trace.json.gz -o report.html

Plain python3, no torch import: the snapshot pickle holds only builtin types (dicts, lists, strings,
numbers). It is loaded with an unpickler that refuses every class (a pickle can run code when loaded;
this one cannot), so a file that is not a memory snapshot fails with a message, not with a surprise.

What becomes what:
  device_traces[d] entries (PyTorch's allocation history; their 'time_us' when present, else the entry's
  index, is t_us):
    alloc                         -> "a" (addr, size, stream; its frames become a stack)
    free_requested                -> "f" (the program's free; free_completed is PyTorch's own business)
    segment_alloc, segment_map    -> "create" (PyTorch reserved memory from CUDA)
    segment_free, segment_unmap   -> "release"
    oom                           -> "oom" (size requested; aux = device_free)
    anything else                 -> skipped (counted in meta.skipped_actions)
  segments (the allocator's state when the snapshot was dumped):
    - blocks 'active_allocated' at the end that no trace event names were allocated before the history
      began (or its ring of max_entries wrapped): they go to live_at_start (with their frames);
    - a free of an address the history never allocated: that block was live at the start too;
    - the reserved bytes at the end minus the history's net creates give meta.physical_at_start_bytes,
      so the physical curve (PyTorch's reserved memory) is right from the first event;
    - the layout at the end becomes a snapshot (reason "pytorch segments at the snapshot").
  meta.peak_reserved_pytorch_native: the peak of PyTorch's reserved bytes over the history, which
  `glake-trace replay` compares with glake's peak physical bytes.
Sizes are PyTorch's block sizes (requests rounded up to 512 bytes), as in the shared traces.
The trace is consistent by construction (an allocation of an address still live gets a free first,
counted in meta.repaired_events; a free's size is its allocation's).

usage: torch_snapshot_to_json.py SNAPSHOT.pickle -o OUT.json[.gz] [--device N] [--name NAME]
                                 [--stack-depth N] [--quiet]
Exit status: 0 written, 1 the snapshot cannot be read or converted (the message says why), 2 usage.
"""
import argparse
import gzip
import io
import json
import os
import pickle
import sys
import tempfile

PAGE = 2 << 20  # page size of the end-of-history snapshot's block map

NOISE_FN = ('PyEval_', '_PyEval_', 'PyObject_', '_PyObject_', 'PyFunction_', '_PyFunction_', 'PyVectorcall',
            '_PyVectorcall', '__libc_start', 'unwind::unwind', 'CapturedTraceback', 'gather_with_cpp',
            'cfunction_call', 'method_vectorcall', 'slot_tp_call')
NOISE_FILE = ('ceval.c', 'pythonrun.c', 'Modules/main.c', 'Objects/call.c', 'Objects/methodobject.c',
              'pycore_ceval.h', 'cpython/abstract.h', 'core/boxing', '/Register', '/Redispatch')


class Fail(Exception):
    pass


class BuiltinsOnly(pickle.Unpickler):
    """Refuses every class: a memory snapshot is made of builtin containers and scalars."""

    def find_class(self, module, name):
        raise Fail(f'the pickle references {module}.{name}; a PyTorch memory snapshot '
                   f'(torch.cuda.memory._dump_snapshot) holds only builtin types')


def load(path):
    try:
        with open(path, 'rb') as f:
            head = f.read(2)
            f.seek(0)
            stream = gzip.open(f) if head == b'\x1f\x8b' else f
            data = BuiltinsOnly(stream).load()
    except Fail:
        raise
    except FileNotFoundError:
        raise Fail(f'{path}: no such file')
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, OSError, IndexError, KeyError) as e:
        raise Fail(f'{path}: not a readable pickle ({type(e).__name__}: {e}); expected the file '
                   f'torch.cuda.memory._dump_snapshot wrote')
    if isinstance(data, list):  # old snapshots: the segments only
        data = {'segments': data, 'device_traces': []}
    if not isinstance(data, dict) or ('segments' not in data and 'device_traces' not in data):
        raise Fail(f'{path}: a pickle, but not a PyTorch memory snapshot (no "segments" or "device_traces")')
    return data


def frame_of(f):
    if not isinstance(f, dict):
        return {'fn': str(f)}
    out = {'fn': str(f.get('name', ''))}
    fn, line = f.get('filename'), f.get('line')
    if fn:
        out['src'] = f'{fn}:{line}' if line is not None else str(fn)
    return out


def noise(f):
    fn, src = f.get('fn', ''), f.get('src', '')
    return any(p in fn for p in NOISE_FN) or any(p in src for p in NOISE_FILE)


class Stacks:
    def __init__(self, depth):
        self.depth = depth
        self.ids = {}
        self.frames = {}

    def id_of(self, frames):
        if not frames:
            return 0
        fr = [frame_of(f) for f in frames]
        kept = [f for f in fr if not noise(f)] or fr
        kept = kept[:self.depth]
        key = tuple((f.get('fn', ''), f.get('src', '')) for f in kept)
        sid = self.ids.get(key)
        if sid is None:
            sid = len(self.ids) + 1
            self.ids[key] = sid
            self.frames[sid] = kept
        return sid


def as_int(v, what):
    # Below 2^64: the trace's numbers are 64-bit (a larger one would only be refused by the reader).
    if isinstance(v, bool) or not isinstance(v, int) or v < 0 or v >= 1 << 64:
        raise Fail(f'{what}: expected a non-negative integer below 2^64, found {v!r}')
    return v


def as_time(v, what):
    if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float('inf'), float('-inf')):
        raise Fail(f'{what}: expected a number of microseconds, found {v!r}')
    return int(v)


def convert(data, path, device=None, name=None, stack_depth=32):
    traces = data.get('device_traces') or []
    segments = data.get('segments') or []
    if not isinstance(traces, list) or not isinstance(segments, list):
        raise Fail(f'{path}: "device_traces" and "segments" must be lists')
    devices = [d for d in range(len(traces)) if traces[d]]
    # A device is an index into device_traces: -1 would name the last one.
    devices += [as_int(s.get('device', 0), f'{path}: segments[{k}] device') for k, s in enumerate(segments)
                if isinstance(s, dict) and s.get('device', 0) not in devices]
    if device is not None:
        if device not in devices:
            raise Fail(f'{path}: device {device} has no history and no segments (devices here: '
                       f'{sorted(set(devices)) or "none"})')
        devices = [device]
    devices = sorted(set(devices))
    stacks = Stacks(stack_depth)

    raw = []  # (t, device, index, op, addr, size, stream, stack, aux)
    skipped = {}
    has_time = True
    for d in devices:
        entries = traces[d] if d < len(traces) and traces[d] else []
        if not isinstance(entries, list):
            raise Fail(f'{path}: device_traces[{d}]: expected a list, found {type(entries).__name__}')
        for i, e in enumerate(entries):
            if not isinstance(e, dict):
                raise Fail(f'{path}: device_traces[{d}][{i}]: expected a dict, found {type(e).__name__}')
            action = e.get('action')
            where = f'{path}: device_traces[{d}][{i}] ({action})'
            op = {'alloc': 'a', 'free_requested': 'f', 'segment_alloc': 'create', 'segment_map': 'create',
                  'segment_free': 'release', 'segment_unmap': 'release', 'oom': 'oom'}.get(action)
            if op is None:
                skipped[str(action)] = skipped.get(str(action), 0) + 1
                continue
            t = e.get('time_us')
            if t is None:
                has_time = False
                t = i
            t = as_time(t, where + ' time_us')
            size = as_int(e.get('size', 0), where + ' size')
            addr = as_int(e.get('addr', 0), where + ' addr') if op != 'oom' else 0
            stream = e.get('stream', 0) or 0
            stream = as_int(stream, where + ' stream') if isinstance(stream, int) and stream >= 0 else 0
            sid = stacks.id_of(e.get('frames')) if op in ('a', 'oom') else 0
            aux = as_int(e.get('device_free', 0) or 0, where + ' device_free') if op == 'oom' else 0
            raw.append((max(t, 0), d, i, op, addr, size, stream, sid, aux))
    if not has_time:
        # Without times, devices cannot be interleaved: one after another, index as time.
        offset, fixed = 0, []
        for d in devices:
            mine = [r for r in raw if r[1] == d]
            fixed += [(offset + r[2],) + r[1:] for r in mine]
            if mine:
                offset += mine[-1][2] + 1
        raw = fixed
    raw.sort(key=lambda r: (r[0], r[1], r[2]))

    # One pass: the live set, blocks live at the start, repairs, physical.
    live = {}            # addr -> (size, device)
    live_at_start = []   # [addr, size, stream, device, stack]
    start_addrs = set()
    named = set()
    events = []
    repaired = 0
    net = {d: 0 for d in devices}
    net_min = {d: 0 for d in devices}
    prev_t = 0
    for t, d, _i, op, addr, size, stream, sid, aux in raw:
        t = max(t, prev_t)
        prev_t = t
        if op == 'a':
            named.add(addr)
            if addr in live:
                old = live.pop(addr)
                events.append([t, 'f', addr, old[0], stream, d, 0, 0, 0])
                repaired += 1
            live[addr] = (size, d)
        elif op == 'f':
            seen = addr in named  # the history named it before: it was not live before the history
            named.add(addr)
            if addr in live:
                size = live.pop(addr)[0]
            elif addr in start_addrs or seen:
                repaired += 1  # a second free of a block (live at the start or allocated here): drop it
                continue
            else:
                live_at_start.append([addr, size, stream, d, 0])
                start_addrs.add(addr)
        elif op in ('create', 'release'):
            net[d] += size if op == 'create' else -size
            net_min[d] = min(net_min[d], net[d])
        events.append([t, op, addr, size, stream, d, 0, sid, aux])

    # Blocks allocated at the end that the history never names: live before it began.
    reserved_end = {d: 0 for d in devices}
    regions = {d: [] for d in devices}
    for k, s in enumerate(segments):
        if not isinstance(s, dict):
            raise Fail(f'{path}: segments[{k}]: expected a dict')
        d = s.get('device', 0)
        if d not in reserved_end:
            continue
        reserved_end[d] += as_int(s.get('total_size', 0), f'{path}: segments[{k}] total_size')
        base = s.get('address') or 0
        off = 0
        for j, b in enumerate(s.get('blocks') or []):
            bsize = as_int(b.get('size', 0), f'{path}: segments[{k}].blocks[{j}] size')
            baddr = b.get('address', base + off)
            off += bsize
            state = b.get('state', '')
            active = state == 'active_allocated'
            regions[d].append([baddr, bsize, 'allocated' if active else 'free', s.get('stream', 0) or 0,
                               b.get('requested_size', bsize) if active else 0])
            if active and baddr not in named and baddr not in live and baddr not in start_addrs:
                sid = stacks.id_of(b.get('frames'))
                live_at_start.append([baddr, bsize, s.get('stream', 0) or 0, d, sid])
                start_addrs.add(baddr)

    # Segment events count even when they net to 0 and none are left (empty_cache() before the dump).
    have_segments = any(reserved_end.values()) or any(e[1] in ('create', 'release') for e in events)
    physical_at_start = 0
    peak_reserved = None
    if have_segments:
        for d in devices:
            physical_at_start += max(reserved_end[d] - net[d], -net_min[d], 0)
        p = peak_reserved = physical_at_start
        for e in events:
            if e[1] == 'create':
                p += e[3]
            elif e[1] == 'release':
                p -= e[3]
            peak_reserved = max(peak_reserved, p)
    else:
        events = [e for e in events if e[1] not in ('create', 'release')]

    live_bytes = sum(b[1] for b in live_at_start)
    peak_live = live_bytes
    for e in events:
        if e[1] == 'a':
            live_bytes += e[3]
            peak_live = max(peak_live, live_bytes)
        elif e[1] == 'f':
            live_bytes -= e[3]

    meta = {
        'name': name or os.path.splitext(os.path.basename(path))[0],
        'source': 'PyTorch memory snapshot (torch.cuda.memory._dump_snapshot)',
        'converted_by': 'scripts/torch_snapshot_to_json.py',
        'snapshot': os.path.abspath(path),
        'devices': devices,
        'time': 'time_us' if has_time else 'entry index (the snapshot has no time_us)',
        'peak_live_bytes': peak_live,
        'stacks': 'on (PyTorch frames)' if stacks.frames else 'off (record with stacks to get them)',
        'sizes': 'PyTorch block sizes (requests rounded up to 512 bytes)',
    }
    if have_segments:
        meta['physical_at_start_bytes'] = physical_at_start
        meta['peak_reserved_pytorch_native'] = peak_reserved
        meta['physical'] = 'PyTorch reserved memory (segments)'
    if skipped:
        meta['skipped_actions'] = skipped
    if repaired:
        meta['repaired_events'] = repaired
    if isinstance(data.get('allocator_settings'), dict):
        meta['allocator_settings'] = data['allocator_settings']

    snapshots = []
    t_end = events[-1][0] if events else 0
    for d in devices:
        if regions[d]:
            regs = sorted(regions[d], key=lambda r: r[0])
            snapshots.append({'t_us': t_end, 'device': d, 'reason': 'pytorch segments at the snapshot',
                              'request': 0, 'page_size': PAGE, 'spare_pages': 0,
                              'stats': {'physical': reserved_end[d]}, 'regions': regs, 'small_blocks': []})
    return {'format': 'glake-trace', 'version': 1, 'meta': meta, 'live_at_start': live_at_start,
            'events': events, 'stacks': {str(k): v for k, v in stacks.frames.items()}, 'snapshots': snapshots}


def write(trace, out):
    d = os.path.dirname(os.path.abspath(out))
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(out) + '.tmp-', dir=d)
    try:
        with os.fdopen(fd, 'wb') as raw:
            sink = gzip.GzipFile(fileobj=raw, mode='wb', compresslevel=6, mtime=0) if out.endswith('.gz') else raw
            text = io.TextIOWrapper(sink, encoding='utf-8')
            text.write('{"format": "glake-trace", "version": 1,\n"meta": ')
            text.write(json.dumps(trace['meta']))
            text.write(',\n"live_at_start": [')
            text.write(','.join('\n' + json.dumps(b, separators=(',', ':')) for b in trace['live_at_start']))
            text.write('],\n"events": [')
            first = True
            for e in trace['events']:
                while len(e) > 5 and e[-1] == 0:
                    e = e[:-1]
                text.write(('\n' if first else ',\n') + json.dumps(e, separators=(',', ':')))
                first = False
            text.write('],\n"stacks": ')
            text.write(json.dumps(trace['stacks']))
            text.write(',\n"snapshots": ')
            text.write(json.dumps(trace['snapshots'], separators=(',', ':')))
            text.write('}\n')
            text.flush()
            text.detach()
            if sink is not raw:
                sink.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def main(argv=None):
    ap = argparse.ArgumentParser(prog='torch_snapshot_to_json.py',
                                 description='PyTorch memory snapshot (pickle) -> glake trace (JSON)')
    ap.add_argument('snapshot')
    ap.add_argument('-o', '--output', required=True, help='the glake trace (.json or .json.gz)')
    ap.add_argument('--device', type=int, default=None, help='only this device (default: all)')
    ap.add_argument('--name', default=None, help='meta.name (default: the snapshot file name)')
    ap.add_argument('--stack-depth', type=int, default=32, help='frames kept per stack (default 32)')
    ap.add_argument('--quiet', action='store_true', help='no line on stdout when done')
    args = ap.parse_args(argv)
    try:
        data = load(args.snapshot)
        try:
            trace = convert(data, args.snapshot, args.device, args.name, max(1, args.stack_depth))
        except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError) as e:
            # Content of a shape convert() does not check for (a dict where a list goes, ...): one line
            # naming the file, not a traceback.
            raise Fail(f'{args.snapshot}: unexpected content for a PyTorch memory snapshot '
                       f'({type(e).__name__}: {e})')
        write(trace, args.output)
    except Fail as e:
        print(f'torch_snapshot_to_json: error: {e}', file=sys.stderr)
        return 1
    except OSError as e:
        print(f'torch_snapshot_to_json: error: {args.output}: {e}', file=sys.stderr)
        return 1
    m = trace['meta']
    if args.quiet:
        return 0
    print(f'{args.output}: {len(trace["events"])} events, {len(trace["live_at_start"])} blocks live at the start, '
          f'{len(trace["stacks"])} stacks, devices {m["devices"]}, peak live {m["peak_live_bytes"]} bytes'
          + (f', PyTorch peak reserved {m["peak_reserved_pytorch_native"]} bytes'
             if 'peak_reserved_pytorch_native' in m else ''))
    return 0


if __name__ == '__main__':
    sys.exit(main())
