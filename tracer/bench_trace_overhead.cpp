// tracer/bench_trace_overhead.cpp: what recording costs the pool's alloc+free pair (host driver).
//
// Budgets (the tracer's issue): tracing on without stacks adds at most 10% to the pair; with stacks,
// at most 2 us per allocation. Measured here, three ways, each in the same process and warm pool,
// variants interleaved and the median of --reps runs taken:
//   - "hot pair": allocate and free one block again and again (sizes cycling through 4 KiB, 256 KiB,
//     4 MiB, 64 MiB: small and large blocks, always the cached hot path); the worst case for the
//     tracer, since the pair itself is cheapest;
//   - "trace": the alloc/free sequence of a real trace (default tests/data/demo-trace.json.gz, or
//     --trace FILE), replayed with every block freed at the end;
//   - "record": the recorder alone, ns per event: a lane's record() (what a pool's events take) and
//     the shared ring's record() (an atomic increment).
// Variants: no observer; the recorder without stacks (PoolTraceObserver, as the shim attaches it: the
// pool's events go to its lane, a ring of 1M events that the runs wrap, so the overwrite path is
// measured too); with stacks (if this build has libunwind), called from --depth (default 40)
// frames deep so that the capture is as deep as in a real program.
// The verdicts compare each variant with "off" run by run (the runs of one round are adjacent in
// time, so a shared machine's slow spells hit both) and take the median of these ratios.
// Prints a table and PASS/FAIL against the budgets; --check makes a FAIL the exit status (1);
// --no-stacks skips the stack variant (for profiling the plain one); --events N sets the ring's
// capacity (default 1M, as GLAKE_TRACE_EVENTS); --exact-time reads the clock at every event.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_map>
#include <vector>

#include <fmt/format.h>

#include "pool/allocator.h"
#include "pool/host_driver.h"
#include "tracer/pool_trace.h"
#include "tracer/recorder.h"
#include "tracer/trace_reader.h"

namespace {

using glake::tracer::Recorder;
using glake::tracer::RecorderOptions;
using Clock = std::chrono::steady_clock;
namespace pool = glake::pool;

struct Step {
  std::uint64_t size;
  std::uint32_t slot;
  bool alloc;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

// Runs `f` at a call depth of `depth` frames, so that stack captures see a realistic stack.
__attribute__((noinline)) double at_depth(int depth, double (*f)(void*), void* arg) {
  if (depth <= 0) return f(arg);
  double r = at_depth(depth - 1, f, arg);
  asm volatile("" ::: "memory");  // no tail call: each level keeps its frame
  return r;
}

struct HotArgs {
  pool::Allocator* pool;
  std::size_t pairs;
};
double hot_pairs(void* p) {
  auto* a = static_cast<HotArgs*>(p);
  static constexpr std::size_t kSizes[] = {4096, 256 << 10, 4 << 20, 64 << 20};
  auto t0 = Clock::now();
  for (std::size_t i = 0; i < a->pairs; ++i) {
    pool::DevPtr ptr = 0;
    if (a->pool->allocate(kSizes[i & 3], 0, &ptr) != pool::Status::ok) std::abort();
    if (a->pool->free(ptr, 0) != pool::Status::ok) std::abort();
  }
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / static_cast<double>(a->pairs);
}

struct TraceArgs {
  pool::Allocator* pool;
  const std::vector<Step>* steps;
  std::vector<pool::DevPtr>* ptr;
};
double trace_pairs(void* p) {
  auto* a = static_cast<TraceArgs*>(p);
  auto& ptr = *a->ptr;
  std::size_t ops = 0;
  auto t0 = Clock::now();
  for (const Step& s : *a->steps) {
    if (s.alloc) {
      if (a->pool->allocate(s.size, 0, &ptr[s.slot]) != pool::Status::ok) std::abort();
    } else if (ptr[s.slot] != 0) {
      if (a->pool->free(ptr[s.slot], 0) != pool::Status::ok) std::abort();
      ptr[s.slot] = 0;
    }
    ++ops;
  }
  for (pool::DevPtr& q : ptr)
    if (q != 0) {
      a->pool->free(q, 0);
      q = 0;
      ++ops;
    }
  return std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / (static_cast<double>(ops) / 2);
}

std::vector<Step> load_steps(const std::string& path, std::size_t* slots) {
  glake::tracer::Trace t = glake::tracer::read_trace(path);
  std::unordered_map<std::uint64_t, std::uint32_t> slot_of;
  std::vector<Step> steps;
  std::uint32_t next = 0;
  for (const auto& e : t.events) {
    if (e.op == glake::tracer::Op::alloc) {
      slot_of[e.addr] = next;
      steps.push_back({e.size, next++, true});
    } else if (e.op == glake::tracer::Op::free) {
      auto it = slot_of.find(e.addr);
      if (it == slot_of.end()) continue;  // a block of live_at_start: not part of the loop
      steps.push_back({e.size, it->second, false});
      slot_of.erase(it);
    }
  }
  *slots = next;
  return steps;
}

}  // namespace

int main(int argc, char** argv) {
  std::string trace_path;
  if (const char* d = std::getenv("GLAKE_TEST_DATA")) trace_path = std::string(d) + "/demo-trace.json.gz";
  int reps = 15, depth = 40;
  std::size_t pairs = 1 << 19;
  bool check = false, no_stacks = false, exact = false;
  std::size_t events = std::size_t{1} << 20;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--trace" && i + 1 < argc) trace_path = argv[++i];
    else if (a == "--reps" && i + 1 < argc) reps = std::max(1, std::atoi(argv[++i]));
    else if (a == "--pairs" && i + 1 < argc) pairs = static_cast<std::size_t>(std::max(1000, std::atoi(argv[++i])));
    else if (a == "--depth" && i + 1 < argc) depth = std::max(0, std::atoi(argv[++i]));
    else if (a == "--check") check = true;
    else if (a == "--no-stacks") no_stacks = true;
    else if (a == "--events" && i + 1 < argc) events = static_cast<std::size_t>(std::max(16L, std::atol(argv[++i])));
    else if (a == "--exact-time") exact = true;
    else {
      std::fprintf(stderr, "usage: bench_trace_overhead [--trace FILE] [--reps N] [--pairs N] [--depth N] [--events N]\n"
                         "                            [--exact-time] [--no-stacks] [--check]\n");
      return 2;
    }
  }
  pool::HostDriver::Options dopt;
  dopt.capacity = std::size_t{1} << 40;
  pool::HostDriver driver(dopt);
  pool::Allocator alloc(driver, pool::Config{});

  RecorderOptions plain;
  plain.capacity = events;
  if (exact) plain.time = RecorderOptions::Time::exact;
  Recorder rec_plain(plain);
  glake::tracer::PoolTraceObserver obs_plain(&rec_plain);
  RecorderOptions with_stacks;
  with_stacks.stacks = true;
  with_stacks.capacity = events;
  with_stacks.time = plain.time;
  Recorder rec_stacks(with_stacks);
  glake::tracer::PoolTraceObserver obs_stacks(&rec_stacks);
  const bool stacks = Recorder::stacks_supported() && !no_stacks;

  struct NullObserver final : pool::Observer {
    void on_event(const pool::PoolEvent&) noexcept override {}
  } null_observer;

  struct Variant {
    const char* name;
    pool::Observer* observer;
  };
  std::vector<Variant> variants = {{"off", nullptr}, {"on, no stacks", &obs_plain}, {"empty observer", &null_observer}};
  if (stacks) variants.push_back({"on, stacks", &obs_stacks});
  const std::size_t kStacks = 3;  // index of the stack variant

  struct Medians {
    std::vector<double> ns;     // per variant, the median ns per pair
    std::vector<double> ratio;  // per variant, the median over runs of its ns / off's ns in that round
  };
  auto run = [&](const char* what, double (*f)(void*), void* arg) {
    std::vector<std::vector<double>> ns(variants.size());
    for (std::size_t v = 0; v < variants.size(); ++v) {  // warm-up
      alloc.set_observer(variants[v].observer);
      at_depth(depth, f, arg);
    }
    for (int r = 0; r < reps; ++r)
      for (std::size_t v = 0; v < variants.size(); ++v) {
        alloc.set_observer(variants[v].observer);
        ns[v].push_back(at_depth(depth, f, arg));
      }
    alloc.set_observer(nullptr);
    Medians m;
    for (auto& x : ns) m.ns.push_back(median(x));
    for (auto& x : ns) {  // x[r] / off[r]
      std::vector<double> ratio;
      for (int r = 0; r < reps; ++r) ratio.push_back(x[r] / ns[0][r]);
      m.ratio.push_back(median(ratio));
    }
    fmt::print("{:<34}", what);
    for (std::size_t v = 0; v < variants.size(); ++v) fmt::print(" {:>10.1f}", m.ns[v]);
    fmt::print("\n");
    return m;
  };

  fmt::print("alloc+free pair through glake's pool on the host driver, ns (median of {} runs; call depth {})\n", reps, depth);
  fmt::print("{:<34}", "");
  for (const Variant& v : variants) fmt::print(" {:>10}", v.name);
  fmt::print("\n");

  HotArgs hot{&alloc, pairs};
  Medians hot_ns = run(fmt::format("hot pair ({} pairs)", pairs).c_str(), hot_pairs, &hot);
  Medians trace_ns;
  if (!trace_path.empty()) {
    std::size_t slots = 0;
    std::vector<Step> steps;
    try {
      steps = load_steps(trace_path, &slots);
    } catch (const std::exception& e) {
      fmt::print(stderr, "cannot read {}: {}\n", trace_path, e.what());
    }
    if (!steps.empty()) {
      std::vector<pool::DevPtr> ptr(slots, 0);
      TraceArgs ta{&alloc, &steps, &ptr};
      std::string name = trace_path.substr(trace_path.rfind('/') + 1);
      trace_ns = run(fmt::format("trace {}", name).c_str(), trace_pairs, &ta);
    }
  }

  // The recorder alone: a lane of its own (not the pool's), then the shared ring.
  if (Recorder::Lane* lane = rec_plain.add_lane()) {
    const int n = 1 << 22;
    auto per_event = [&](auto record) {
      std::vector<double> v;
      for (int r = 0; r < reps; ++r) {
        auto t0 = Clock::now();
        for (int i = 0; i < n; ++i) record(static_cast<std::uint64_t>(i) << 12);
        v.push_back(std::chrono::duration<double, std::nano>(Clock::now() - t0).count() / n);
      }
      return median(v);
    };
    double lane_ns = per_event([&](std::uint64_t addr) { lane->record(glake::tracer::Op::alloc, 1, 0, addr, 4096, 0); });
    double shared_ns = per_event([&](std::uint64_t addr) {
      rec_plain.record(glake::tracer::Op::alloc, 1, 0, addr, 4096, 0);
    });
    fmt::print("{:<34} {:>10.1f} ns per event (ring of {} events, clock {})\n", "lane record(), no stacks", lane_ns,
               rec_plain.capacity(), rec_plain.clock().name());
    fmt::print("{:<34} {:>10.1f} ns per event (an atomic increment)\n",
               "shared-ring record(), no stacks", shared_ns);
  }

  bool ok = true;
  auto verdict = [&](const char* what, const Medians& md) {
    const std::vector<double>& m = md.ns;
    if (m.size() < 2) return;
    double add = md.ratio[1] - 1;
    bool pass = add <= 0.10;
    ok = ok && pass;
    fmt::print("{}: tracing without stacks adds {:+.1f}% to the pair (median of {} paired runs; medians {:.1f} -> {:.1f} "
               "ns; budget 10%): {}\n",
               what, add * 100, reps, m[0], m[1], pass ? "PASS" : "FAIL");
    fmt::print("{}: the pool's observer hook alone (an empty observer) adds {:+.1f}%\n", what, (md.ratio[2] - 1) * 100);
    if (m.size() > kStacks) {
      double per_alloc_us = m[0] * (md.ratio[kStacks] - 1) / 1000.0;  // one stack capture per pair (per allocation)
      bool spass = per_alloc_us <= 2.0;
      ok = ok && spass;
      fmt::print("{}: stacks cost {:.2f} us per allocation (budget 2 us): {}\n", what, per_alloc_us, spass ? "PASS" : "FAIL");
    }
  };
  verdict("hot pair", hot_ns);
  verdict("trace", trace_ns);
  if (!stacks) fmt::print("stacks: not measured ({})\n", no_stacks ? "--no-stacks" : "this build has no libunwind");
  auto c = rec_stacks.counters();
  if (stacks) fmt::print("stack table: {} distinct stacks, {} captures found it full\n", c.stacks, c.stacks_dropped);
  return check && !ok ? 1 : 0;
}
