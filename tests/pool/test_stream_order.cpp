// tests/pool/test_stream_order.cpp: randomized stream-order properties of the pool over the host
// driver. Every free records a tracking event of the test's own on the freeing stream and remembers
// the physical bytes (page handle, offsets) the block covered; every allocation checks that no
// physical byte it gets was freed on another stream whose work before that free may still run.
// Streams are created and destroyed (forget_stream) on the way; trims run in between; after freeing
// everything and a full trim, nothing is held.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "allocator_fixture.h"

namespace glake::pool::testing {
namespace {

constexpr std::size_t kPage = 64 << 10;

struct PhysRange {
  PhysHandle handle;
  std::size_t lo, hi;
};

std::vector<PhysRange> phys_of(const Allocator& pool, DevPtr p) {
  BlockInfo info;
  std::vector<PhysRange> out;
  if (pool.describe(p, &info) != Status::ok) {
    ADD_FAILURE() << "describe failed";
    return out;
  }
  std::size_t at = 0;  // offset in the concatenated pages
  const std::size_t lo = info.offset_in_first_page, hi = lo + info.block_size;
  for (const PhysPage& pg : info.pages) {
    const std::size_t a = std::max(lo, at), b = std::min(hi, at + pg.size);
    if (a < b) out.push_back({pg.handle, a - at, b - at});
    at += pg.size;
  }
  return out;
}

// What the test knows of freed memory: the physical bytes, the stream, and an event recorded there.
class Tracker {
 public:
  explicit Tracker(HostDriver& d) : d_(d) {}
  ~Tracker() {
    for (const Entry& e : entries_) d_.event_destroy(e.event);
  }
  // Before pool.free(p, s).
  void on_free(const Allocator& pool, DevPtr p, StreamHandle s) {
    std::vector<PhysRange> r = phys_of(pool, p);
    EventHandle ev = 0;
    // (Retried: a test may inject failures into the driver's calls.)
    for (int i = 0; i < 16 && d_.event_create(&ev) != Status::ok; ++i) ev = 0;
    ASSERT_NE(ev, 0u);
    Status rec = Status::unknown;
    for (int i = 0; i < 16 && rec != Status::ok; ++i) rec = d_.event_record(ev, s);
    ASSERT_EQ(rec, Status::ok);
    std::lock_guard lock(mu_);
    entries_.push_back({std::move(r), s, ev, p});
  }
  // After p was handed out on s: empty if none of its bytes is still in use by another stream.
  std::string on_alloc(const Allocator& pool, DevPtr p, StreamHandle s) {
    std::vector<PhysRange> r = phys_of(pool, p);
    std::lock_guard lock(mu_);
    for (const Entry& e : entries_) {
      if (e.stream == s) continue;
      bool overlap = false;
      for (const PhysRange& a : r)
        for (const PhysRange& b : e.ranges)
          if (a.handle == b.handle && a.lo < b.hi && b.lo < a.hi) overlap = true;
      if (overlap && query(e.event) != Status::ok)
        return "block " + hex(p) + " handed to stream " + std::to_string(s) + " overlaps bytes freed (at " +
               hex(e.va) + ") on stream " + std::to_string(e.stream) + " whose work before that free still runs";
    }
    return {};
  }
  // Forgets what is known complete.
  void prune() {
    std::lock_guard lock(mu_);
    std::erase_if(entries_, [&](const Entry& e) {
      if (query(e.event) != Status::ok) return false;
      d_.event_destroy(e.event);
      return true;
    });
  }

 private:
  Status query(EventHandle e) {
    Status r = Status::unknown;
    for (int i = 0; i < 16 && r != Status::ok && r != Status::not_ready; ++i) r = d_.event_query(e);
    return r;
  }
  static std::string hex(DevPtr p) {
    char b[32];
    std::snprintf(b, sizeof b, "%#llx", static_cast<unsigned long long>(p));
    return b;
  }
  struct Entry {
    std::vector<PhysRange> ranges;
    StreamHandle stream;
    EventHandle event;
    DevPtr va;
  };
  HostDriver& d_;
  std::mutex mu_;
  std::vector<Entry> entries_;
};

void expect_all_returned(PoolModel& m, const char* what) {
  m.free_all();
  m.pool.trim(0);
  EXPECT_EQ(m.pool.validate(), "") << what;
  const Stats st = m.pool.stats();
  EXPECT_EQ(st.requested.current, 0u) << what;
  EXPECT_EQ(st.blocks.current, 0u) << what;
  EXPECT_EQ(st.physical.current, 0u) << what;
  EXPECT_EQ(st.mapped.current, 0u) << what;
  EXPECT_EQ(m.pool.cached_bytes(), 0u) << what;
  EXPECT_EQ(m.driver.physical_in_use(), 0u) << what;
  EXPECT_EQ(m.driver.mappings(), 0u) << what;
}

// One thread, many streams: allocations on any live stream, frees on the block's stream with work
// often still queued, work completed at random, streams destroyed (after freeing their blocks on
// them) and new ones made, trims.
void run_streams(std::uint32_t seed, Config config, int ops, std::size_t capacity_pages) {
  PoolModel m(small_pages(capacity_pages * kPage), config);
  Tracker tr(m.driver);
  std::mt19937_64 rng(seed);
  std::vector<StreamHandle> streams = {1, 2, 3, 4};
  StreamHandle next_stream = 5;
  for (int op = 0; op < ops; ++op) {
    const int what = static_cast<int>(rng() % 100);
    const StreamHandle s = streams[rng() % streams.size()];
    if (what < 48 || m.live.empty()) {
      const std::size_t size = rng() % 4 == 0 ? 1 + rng() % (kPage / 2) : 1 + rng() % (8 * kPage);
      DevPtr p = 0;
      const Status r = m.alloc(size, s, &p);
      ASSERT_TRUE(r == Status::ok || r == Status::out_of_memory) << status_name(r);
      if (r == Status::ok) {
        ASSERT_EQ(tr.on_alloc(m.pool, p, s), "") << "op " << op << " seed " << seed;
      }
    } else if (what < 90) {
      auto it = m.live.begin();
      std::advance(it, static_cast<long>(rng() % m.live.size()));
      const DevPtr p = it->first;
      const StreamHandle fs = it->second.stream;
      if (rng() % 2 == 0) m.driver.enqueue_work(fs);  // a kernel still using p
      tr.on_free(m.pool, p, fs);
      ASSERT_EQ(m.free(p, fs), Status::ok);
    } else if (what < 95) {
      m.driver.complete_work(s);
    } else if (what < 98) {
      // Destroy stream s (its blocks freed on it first, work maybe pending) and make a new one.
      if (rng() % 2 == 0) m.driver.enqueue_work(s);
      std::vector<DevPtr> mine;
      for (const auto& [p, b] : m.live)
        if (b.stream == s) mine.push_back(p);
      for (DevPtr p : mine) {
        tr.on_free(m.pool, p, s);
        ASSERT_EQ(m.free(p, s), Status::ok);
      }
      m.pool.forget_stream(s);
      std::replace(streams.begin(), streams.end(), s, next_stream++);
    } else {
      m.pool.trim(rng() % 2 ? 0 : 8 * kPage);
    }
    ASSERT_EQ(m.pool.validate(), "") << "after op " << op << " (seed " << seed << ")";
    if (op % 64 == 0) {
      ASSERT_EQ(m.check(), "") << "after op " << op << " (seed " << seed << ")";
      tr.prune();
    }
  }
  ASSERT_EQ(m.check(), "");
  // Every stream's work completes: everything must come back.
  for (StreamHandle s = 1; s < next_stream; ++s) m.driver.complete_work(s);
  expect_all_returned(m, "after the random run");
}

// A driver that runs a hook before each call: what another thread could do while a slow path has
// released the pool's mutex around that call (the hook runs on the calling thread, so it must not
// take grow_mu: frees only, and work on streams).
class HookDriver final : public Driver {
 public:
  explicit HookDriver(HostDriver::Options o) : host(o) {}
  HostDriver host;
  std::function<void(Call)> hook;

  int device() const override { return host.device(); }
  std::size_t granularity() const override { return host.granularity(); }
  Status mem_info(std::size_t* f, std::size_t* t) override { return host.mem_info(f, t); }
  Status reserve(std::size_t n, DevPtr* va) override { return run(Call::reserve, [&] { return host.reserve(n, va); }); }
  Status free_reserve(DevPtr va, std::size_t n) override {
    return run(Call::free_reserve, [&] { return host.free_reserve(va, n); });
  }
  Status create(std::size_t n, PhysHandle* h) override { return run(Call::create, [&] { return host.create(n, h); }); }
  Status release(PhysHandle h) override { return run(Call::release, [&] { return host.release(h); }); }
  Status map(DevPtr va, std::size_t n, PhysHandle h, std::size_t off) override {
    return run(Call::map, [&] { return host.map(va, n, h, off); });
  }
  Status unmap(DevPtr va, std::size_t n) override { return run(Call::unmap, [&] { return host.unmap(va, n); }); }
  Status set_access(DevPtr va, std::size_t n) override {
    return run(Call::set_access, [&] { return host.set_access(va, n); });
  }
  Status export_fd(PhysHandle h, int* fd) override { return host.export_fd(h, fd); }
  Status event_create(EventHandle* e) override { return run(Call::event_create, [&] { return host.event_create(e); }); }
  Status event_destroy(EventHandle e) override { return run(Call::event_destroy, [&] { return host.event_destroy(e); }); }
  Status event_record(EventHandle e, StreamHandle s) override {
    return run(Call::event_record, [&] { return host.event_record(e, s); });
  }
  Status event_query(EventHandle e) override { return run(Call::event_query, [&] { return host.event_query(e); }); }
  Status event_synchronize(EventHandle e) override {
    return run(Call::event_synchronize, [&] { return host.event_synchronize(e); });
  }
  Status stream_wait_event(StreamHandle s, EventHandle e) override { return host.stream_wait_event(s, e); }
  Status stream_is_capturing(StreamHandle s, bool* c) override {
    return run(Call::stream_is_capturing, [&] { return host.stream_is_capturing(s, c); });
  }
  Status stream_synchronize(StreamHandle s) override {
    return run(Call::stream_synchronize, [&] { return host.stream_synchronize(s); });
  }
  Status memcpy_async(void* d, const void* s, std::size_t n, StreamHandle st) override {
    return host.memcpy_async(d, s, n, st);
  }
  Status host_alloc(std::size_t n, void** p) override { return host.host_alloc(n, p); }
  Status host_free(void* p) override { return host.host_free(p); }

 private:
  template <class F>
  Status run(Call c, F f) {
    if (hook && !in_hook_) {
      in_hook_ = true;
      hook(c);
      in_hook_ = false;
    }
    return f();
  }
  bool in_hook_ = false;
};

// A free on a stream while forget_stream() has released the pool's mutex around its driver calls (the
// stream still exists: it is destroyed after forget_stream returns). Once the stream's work is done,
// the freed block must settle and go back on trim.
TEST(StreamOrder, AFreeDuringForgetStreamIsNotLost) {
  HookDriver d(small_pages(64 * kPage));
  Config c;
  c.small_limit = 0;
  Allocator pool(d, c);
  DevPtr a = 0, b = 0;
  ASSERT_EQ(pool.allocate(4 * kPage, 1, &a), Status::ok);
  ASSERT_EQ(pool.allocate(4 * kPage, 1, &b), Status::ok);
  d.host.enqueue_work(1);
  ASSERT_EQ(pool.free(a, 1), Status::ok);
  bool freed = false;
  d.hook = [&](Call k) {
    if (k == Call::event_record && !freed) {
      freed = true;
      EXPECT_EQ(pool.free(b, 1), Status::ok);  // another thread's last free on the stream
    }
  };
  pool.forget_stream(1);
  d.hook = nullptr;
  ASSERT_TRUE(freed);
  d.host.complete_work(1);  // all of the destroyed stream's work is done
  pool.trim(0);
  EXPECT_EQ(pool.validate(), "");
  EXPECT_EQ(pool.stats().physical.current, 0u) << "a block freed on the stream while it was forgotten never settles";
  EXPECT_EQ(d.host.physical_in_use(), 0u);
  EXPECT_EQ(pool.cached_bytes(), 0u);
}

// The same with a small piece: it is parked in the stream's quick cache, which forget_stream() re-keys
// without looking (the piece keeps the old handle, so a new stream reusing the handle would own it).
TEST(StreamOrder, APieceFreedDuringForgetStreamStaysWithThatStream) {
  HookDriver d(small_pages(64 * kPage));
  Allocator pool(d, Config{});
  DevPtr a = 0, p = 0;
  ASSERT_EQ(pool.allocate(4 * kPage, 1, &a), Status::ok);
  ASSERT_EQ(pool.allocate(4096, 1, &p), Status::ok);
  d.host.enqueue_work(1);
  ASSERT_EQ(pool.free(a, 1), Status::ok);
  bool freed = false;
  d.hook = [&](Call k) {
    if (k == Call::event_record && !freed) {
      freed = true;
      EXPECT_EQ(pool.free(p, 1), Status::ok);
    }
  };
  pool.forget_stream(1);
  d.hook = nullptr;
  ASSERT_TRUE(freed);
  EXPECT_EQ(pool.validate(), "");
  d.host.complete_work(1);
  pool.trim(0);
  EXPECT_EQ(pool.validate(), "");
  EXPECT_EQ(pool.stats().physical.current, 0u);
}

// A program that frees on the stream in every round of forget_stream(): after a few rounds the state
// moves on, the pool stays valid (pieces parked meanwhile included) and the frees after the last
// record stay cached, never handed to another stream before the work is done.
TEST(StreamOrder, FreesInEveryRoundOfForgetStreamStayCachedAndValid) {
  HookDriver d(small_pages(64 * kPage));
  Allocator pool(d, Config{});
  std::vector<DevPtr> blocks(8), pieces(8);
  for (DevPtr& b : blocks) ASSERT_EQ(pool.allocate(2 * kPage, 1, &b), Status::ok);
  for (DevPtr& p : pieces) ASSERT_EQ(pool.allocate(4096, 1, &p), Status::ok);
  d.host.enqueue_work(1);
  ASSERT_EQ(pool.free(blocks[0], 1), Status::ok);
  std::size_t next = 1;
  d.hook = [&](Call k) {
    if (k != Call::event_record || next == blocks.size()) return;
    EXPECT_EQ(pool.free(blocks[next], 1), Status::ok);
    EXPECT_EQ(pool.free(pieces[next], 1), Status::ok);
    ++next;
  };
  pool.forget_stream(1);
  d.hook = nullptr;
  EXPECT_GT(next, 2u) << "no second round";
  EXPECT_LT(next, blocks.size()) << "the rounds were not bounded";
  EXPECT_EQ(pool.validate(), "");
  // Stream 2 may not get what stream 1 freed while its work runs.
  DevPtr q = 0;
  ASSERT_EQ(pool.allocate(2 * kPage, 2, &q), Status::ok);
  for (std::size_t i = 0; i < next; ++i) EXPECT_NE(q, blocks[i]) << i;
  ASSERT_EQ(pool.free(q, 2), Status::ok);
  for (std::size_t i = next; i < blocks.size(); ++i) {
    ASSERT_EQ(pool.free(blocks[i], 2), Status::ok);
    ASSERT_EQ(pool.free(pieces[i], 2), Status::ok);
  }
  ASSERT_EQ(pool.free(pieces[0], 2), Status::ok);
  d.host.complete_work(1);
  pool.trim(0);
  EXPECT_EQ(pool.validate(), "");
}

// Random operations on many streams where, inside the slow paths' driver calls (mu released, blocks
// busy), "another thread" frees blocks and completes work. No early reuse, every byte kept, and
// everything back after a full trim.
void run_hooked(std::uint32_t seed, Config config, int ops, std::size_t capacity_pages, bool chaos = false) {
  HookDriver d(small_pages(capacity_pages * kPage));
  Allocator pool(d, config);
  Tracker tr(d.host);
  std::mt19937_64 rng(seed);
  std::map<DevPtr, LiveBlock> live;
  std::uint64_t next_id = 1;
  std::vector<StreamHandle> streams = {1, 2, 3, 4};
  StreamHandle next_stream = 5;
  auto free_one = [&](bool in_hook) {
    auto it = live.begin();
    std::advance(it, static_cast<long>(rng() % live.size()));
    const DevPtr p = it->first;
    const StreamHandle fs = it->second.stream;
    if (rng() % 2 == 0) d.host.enqueue_work(fs);
    tr.on_free(pool, p, fs);
    live.erase(it);
    EXPECT_EQ(pool.free(p, fs), Status::ok) << (in_hook ? "in hook" : "");
  };
  const std::function<void(Call)> hook = [&](Call) {
    const int w = static_cast<int>(rng() % 8);
    if (w == 0 && !live.empty()) free_one(true);
    if (w == 1) d.host.complete_work(streams[rng() % streams.size()]);
  };
  d.hook = hook;
  for (int op = 0; op < ops; ++op) {
    const int what = static_cast<int>(rng() % 100);
    const StreamHandle s = streams[rng() % streams.size()];
    if (what < 50 || live.empty()) {
      const std::size_t size = rng() % 4 == 0 ? 1 + rng() % (kPage / 2) : 1 + rng() % (8 * kPage);
      DevPtr p = 0;
      const Status r = pool.allocate(size, s, &p);
      ASSERT_TRUE(chaos || r == Status::ok || r == Status::out_of_memory) << status_name(r);
      if (r == Status::ok) {
        ASSERT_EQ(live.count(p), 0u);
        ASSERT_EQ(tr.on_alloc(pool, p, s), "") << "op " << op << " seed " << seed;
        live[p] = {next_id, size, s};
        PoolModel::fill(p, next_id++, size);
      }
    } else if (what < 90) {
      free_one(false);
    } else if (what < 95) {
      d.host.complete_work(s);
      if (chaos && rng() % 3 == 0) d.host.set_capturing(s, rng() % 2 == 0);
      if (chaos && rng() % 3 == 0) {
        const Call kinds[] = {Call::event_record, Call::event_query, Call::event_synchronize, Call::stream_synchronize,
                              Call::event_create, Call::stream_is_capturing, Call::map, Call::unmap, Call::create,
                              Call::release, Call::reserve};
        d.host.fail_nth(kinds[rng() % 11], 1 + rng() % 4, rng() % 2 ? Status::unknown : Status::invalid_handle);
      }
    } else if (what < 98) {
      std::vector<DevPtr> mine;
      for (const auto& [p, b] : live)
        if (b.stream == s) mine.push_back(p);
      for (DevPtr p : mine) {
        tr.on_free(pool, p, s);
        live.erase(p);
        ASSERT_EQ(pool.free(p, s), Status::ok);
      }
      // (A stream destroyed mid-capture, or one that can be neither recorded on nor waited for, keeps
      // its frees for good by design: not here.)
      d.host.set_capturing(s, false);
      d.host.clear_faults();
      d.hook = nullptr;
      pool.forget_stream(s);
      d.hook = hook;
      std::replace(streams.begin(), streams.end(), s, next_stream++);
    } else {
      pool.trim(rng() % 2 ? 0 : 8 * kPage);
    }
    ASSERT_EQ(pool.validate(), "") << "after op " << op << " (seed " << seed << ")";
    if (op % 32 == 0) {
      for (const auto& [p, b] : live) {
        const auto* w = reinterpret_cast<const std::uint64_t*>(p);
        for (std::size_t i = 0; i < b.size / 8; ++i)
          ASSERT_EQ(w[i], pattern_word(b.id, i)) << "block " << b.id << " op " << op << " seed " << seed;
      }
      tr.prune();
    }
  }
  d.hook = nullptr;
  d.host.clear_faults();
  for (StreamHandle x = 1; x < next_stream; ++x) d.host.set_capturing(x, false);
  for (const auto& [p, b] : live) ASSERT_EQ(pool.free(p, b.stream), Status::ok);
  for (StreamHandle x = 1; x < next_stream; ++x) d.host.complete_work(x);
  pool.trim(0);
  EXPECT_EQ(pool.validate(), "");
  const Stats st = pool.stats();
  EXPECT_EQ(st.requested.current, 0u) << "seed " << seed;
  EXPECT_EQ(st.physical.current, 0u) << "seed " << seed;
  EXPECT_EQ(st.mapped.current, 0u) << "seed " << seed;
  EXPECT_EQ(d.host.physical_in_use(), 0u) << "seed " << seed;
  EXPECT_EQ(d.host.mappings(), 0u) << "seed " << seed;
}

int seeds(int n) {
  const char* e = std::getenv("STREAM_ORDER_SEEDS");  // more seeds, by hand
  return e != nullptr ? std::atoi(e) : n;
}

TEST(StreamOrder, FreesInsideSlowPathsNeverReuseEarly) {
  std::uint32_t seed = 900;
  for (const Variant& v : variants(kPage)) {
    SCOPED_TRACE(v.name);
    for (int i = 0; i < seeds(8); ++i) {
      ASSERT_NO_FATAL_FAILURE(run_hooked(++seed, v.config, 1500, i % 2 ? 40 : 96));
    }
  }
}

TEST(StreamOrder, CapturesAndEventFailuresNeverReuseEarly) {
  std::uint32_t seed = 1900;
  for (const Variant& v : variants(kPage)) {
    SCOPED_TRACE(v.name);
    for (int i = 0; i < seeds(8); ++i) {
      ASSERT_NO_FATAL_FAILURE(run_hooked(++seed, v.config, 1500, i % 2 ? 40 : 96, true));
    }
  }
}

// Roomy (96 pages) and tight (40: stitches, waits and out-of-memory retries).
TEST(StreamOrder, RandomStreamsNeverReuseEarly) {
  for (const std::size_t capacity : {96, 40}) {
    std::uint32_t seed = capacity == 96 ? 100 : 500;
    for (const Variant& v : variants(kPage)) {
      SCOPED_TRACE(std::string(v.name) + " in " + std::to_string(capacity) + " pages");
      for (int i = 0; i < 6; ++i) ASSERT_NO_FATAL_FAILURE(run_streams(++seed, v.config, 1500, capacity));
    }
  }
}

// Threads on their own streams, one pool; early reuse is checked the same way.
TEST(StreamOrder, ThreadsNeverReuseEarly) {
  for (const Variant& v : variants(kPage)) {
    SCOPED_TRACE(v.name);
    HostDriver driver(small_pages(256 * kPage));
    Allocator pool(driver, v.config);
    Tracker tr(driver);
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 rng(static_cast<std::uint64_t>(t) + 7);
        std::vector<std::pair<DevPtr, StreamHandle>> live;
        StreamHandle base = 1000 * static_cast<StreamHandle>(t + 1);
        StreamHandle streams[2] = {base, base + 1};
        StreamHandle next = base + 2;
        for (int op = 0; op < 1500 && failures == 0; ++op) {
          const std::size_t k = rng() % 2;
          const StreamHandle s = streams[k];
          const int what = static_cast<int>(rng() % 100);
          if (what < 50 || live.size() < 4) {
            const std::size_t size = rng() % 3 == 0 ? 1 + rng() % 8000 : 1 + rng() % (6 * kPage);
            DevPtr p = 0;
            if (pool.allocate(size, s, &p) != Status::ok || p == 0) continue;
            if (std::string e = tr.on_alloc(pool, p, s); !e.empty()) {
              ADD_FAILURE() << e;
              ++failures;
            }
            live.emplace_back(p, s);
          } else if (what < 92) {
            const std::size_t i = rng() % live.size();
            auto [p, fs] = live[i];
            if (rng() % 2 == 0) driver.enqueue_work(fs);
            tr.on_free(pool, p, fs);
            if (pool.free(p, fs) != Status::ok) ++failures;
            live[i] = live.back();
            live.pop_back();
          } else if (what < 96) {
            driver.complete_work(s);
          } else if (what < 98) {
            for (std::size_t i = 0; i < live.size();) {
              if (live[i].second != s) {
                ++i;
                continue;
              }
              tr.on_free(pool, live[i].first, s);
              if (pool.free(live[i].first, s) != Status::ok) ++failures;
              live[i] = live.back();
              live.pop_back();
            }
            pool.forget_stream(s);
            streams[k] = next++;
          } else {
            pool.trim(t == 0 ? 0 : 16 * kPage);
          }
          if (op % 100 == 0) tr.prune();
        }
        for (auto [p, fs] : live) {
          tr.on_free(pool, p, fs);
          if (pool.free(p, fs) != Status::ok) ++failures;
        }
        for (StreamHandle x = base; x < next; ++x) driver.complete_work(x);
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_EQ(pool.validate(), "");
    pool.trim(0);
    EXPECT_EQ(pool.validate(), "");
    EXPECT_EQ(pool.stats().physical.current, 0u);
    EXPECT_EQ(pool.stats().mapped.current, 0u);
    EXPECT_EQ(driver.physical_in_use(), 0u);
  }
}

}  // namespace
}  // namespace glake::pool::testing
