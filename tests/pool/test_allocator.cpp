// tests/pool/test_allocator.cpp: the pool over the host driver: basics, stitching, stream order, bad
// input, out-of-memory, trim, a property test against a reference model and fault injection at every
// driver call the pool makes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <random>
#include <vector>

#include "allocator_fixture.h"
#include "pool/config.h"

namespace glake::pool::testing {
namespace {

constexpr std::size_t kPage = 64 << 10;  // small pages keep the tests fast

Config no_limit() { return Config{}; }
// Small requests packed into shared one-page chunks (GLAKE_SMALL_LIMIT).
Config pieces() {
  Config c;
  c.small_limit = kPage / 2;
  return c;
}

TEST(Allocator, ZeroAbsurdDoubleAndForeign) {
  PoolModel m(small_pages(16 << 20), no_limit());
  DevPtr p = 1;
  EXPECT_EQ(m.pool.allocate(0, 0, &p), Status::ok);
  EXPECT_EQ(p, 0u);
  EXPECT_EQ(m.pool.allocate(~std::size_t{0}, 0, &p), Status::out_of_memory);
  EXPECT_EQ(m.pool.allocate(std::size_t{1} << 47, 0, &p), Status::out_of_memory);
  EXPECT_EQ(m.pool.allocate(8, 0, nullptr), Status::invalid_value);
  ASSERT_EQ(m.alloc(100, 0, &p), Status::ok);
  EXPECT_TRUE(m.pool.owns(p));
  EXPECT_EQ(m.free(p, 0), Status::ok);
  EXPECT_FALSE(m.pool.owns(p));
  EXPECT_EQ(m.pool.free(p), Status::invalid_value) << "double free";
  int local = 0;
  EXPECT_EQ(m.pool.free(reinterpret_cast<DevPtr>(&local)), Status::invalid_value) << "foreign pointer";
  EXPECT_EQ(m.pool.free(0), Status::invalid_value);
  EXPECT_EQ(m.pool.validate(), "");
  Stats s = m.pool.stats();
  EXPECT_EQ(s.ooms, 2u);
  EXPECT_EQ(s.requested.current, 0u);
}

TEST(Allocator, SmallRequestsShareAPage) {
  PoolModel m(small_pages(16 << 20), pieces());
  std::vector<DevPtr> ps(20);
  for (auto& p : ps) ASSERT_EQ(m.alloc(1000, 0, &p), Status::ok);
  Stats s = m.pool.stats();
  EXPECT_EQ(s.physical.current, kPage) << "twenty 1000-byte requests fit one page";
  EXPECT_EQ(s.requested.current, 20u * 1000);
  EXPECT_EQ(s.blocks.current, 20u * 1024);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  m.free_all();
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.pool.cached_bytes(), kPage);
}

TEST(Allocator, LargeRequestsShareTheirEndPages) {
  PoolModel m(small_pages(16 << 20), no_limit());
  // 2.25 pages each: in whole pages four would take 12; packed, they take 9.
  std::vector<DevPtr> ps(4);
  for (auto& p : ps) ASSERT_EQ(m.alloc(9 * kPage / 4, 0, &p), Status::ok);
  for (std::size_t i = 1; i < ps.size(); ++i) EXPECT_EQ(ps[i], ps[i - 1] + 9 * kPage / 4);
  EXPECT_EQ(m.pool.stats().physical.current, 9 * kPage);
  EXPECT_EQ(m.pool.stats().blocks.current, 9 * kPage);
  BlockInfo info;
  ASSERT_EQ(m.pool.describe(ps[1], &info), Status::ok);
  EXPECT_EQ(info.offset_in_first_page, kPage / 4);
  EXPECT_EQ(info.pages.size(), 3u) << "2.25 pages from a quarter into a page span three";
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  // The middle two freed: 4.5 pages, reused in place without a new page.
  ASSERT_EQ(m.free(ps[1], 0), Status::ok);
  ASSERT_EQ(m.free(ps[2], 0), Status::ok);
  DevPtr mid = 0;
  ASSERT_EQ(m.alloc(9 * kPage / 2, 0, &mid), Status::ok);
  EXPECT_EQ(mid, ps[1]);
  EXPECT_EQ(m.pool.stats().physical.current, 9 * kPage);
  // Nearly whole pages (rounding adds at most 1/16): pages of its own, from a page boundary.
  DevPtr whole = 0;
  ASSERT_EQ(m.alloc(8 * kPage - 512, 0, &whole), Status::ok);
  ASSERT_EQ(m.pool.describe(whole, &info), Status::ok);
  EXPECT_EQ(info.offset_in_first_page, 0u);
  EXPECT_EQ(info.block_size, 8 * kPage);
  EXPECT_EQ(info.pages.size(), 8u);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  // Trim gives back only pages no live block touches.
  ASSERT_EQ(m.free(ps[0], 0), Status::ok);
  m.pool.trim(0);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.pool.stats().physical.current, 15 * kPage) << "of 17, ps[0]'s first two pages go; its third holds mid";
  m.free_all();
  m.pool.trim(0);
  EXPECT_EQ(m.pool.stats().physical.current, 0u);
  EXPECT_EQ(m.pool.validate(), "");
}

// A free page tail sandwiched between live blocks begins a new window through a second mapping of its
// page: one page fewer is created, the window's first bytes are the tail's own, the block before the
// tail keeps its bytes, and trim gives the tail back.
void lend_scenario(bool lend) {
  Config c;
  c.small_limit = 0;
  c.lend = lend;
  PoolModel m(small_pages(64 * kPage), c);
  DevPtr a = 0, b = 0, big = 0, d = 0;
  ASSERT_EQ(m.alloc(3 * kPage / 2, 0, &a), Status::ok);  // [0, 1.5) of the first two pages
  ASSERT_EQ(m.alloc(kPage / 2, 0, &b), Status::ok);      // [1.5, 2): the first page's tail
  ASSERT_EQ(b, a + 3 * kPage / 2);
  ASSERT_EQ(m.alloc(4 * kPage, 0, &big), Status::ok);    // whole pages [2, 6)
  ASSERT_EQ(big, a + 2 * kPage);
  ASSERT_EQ(m.free(b, 0), Status::ok);  // the tail is free, between a and big
  ASSERT_EQ(m.pool.stats().physical.current, 6 * kPage);
  ASSERT_EQ(m.alloc(9 * kPage / 4, 0, &d), Status::ok);  // 2.25 pages: 0.25 of a third page
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "") << "the shadow must not overwrite the block before the tail";
  if (!lend) {
    EXPECT_EQ(m.pool.stats().physical.current, 9 * kPage);
    return;
  }
  EXPECT_EQ(m.pool.stats().physical.current, 8 * kPage) << "the tail's page serves the window's first half page";
  EXPECT_EQ((d - a) % kPage, kPage / 2) << "the window starts at the tail's offset in its page";
  EXPECT_EQ(std::memcmp(reinterpret_cast<void*>(b), reinterpret_cast<void*>(d), kPage / 2), 0)
      << "the window's first bytes are the tail's";
  BlockInfo info;
  ASSERT_EQ(m.pool.describe(d, &info), Status::ok);
  EXPECT_EQ(info.offset_in_first_page, kPage / 2);
  EXPECT_EQ(info.pages.size(), 3u);
  // Freed and trimmed: the second mapping goes and the tail is free at home again.
  ASSERT_EQ(m.free(d, 0), Status::ok);
  m.pool.trim(0);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.pool.stats().physical.current, 6 * kPage);
  DevPtr again = 0;
  ASSERT_EQ(m.alloc(kPage / 2, 0, &again), Status::ok);
  EXPECT_EQ(again, b);
  EXPECT_EQ(m.check(), "");
  m.free_all();
  m.pool.trim(0);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.pool.stats().physical.current, 0u);
}

TEST(Allocator, AFreePageTailBeginsAWindow) { lend_scenario(true); }
TEST(Allocator, LendingIsOptIn) {
  EXPECT_FALSE(Config{}.lend);
  lend_scenario(false);
}

// The slow path gives a lent tail back once the window's part of its page is free and settled.
TEST(Allocator, TheSlowPathGivesLentTailsBack) {
  Config c;
  c.small_limit = 0;
  c.lend = true;
  PoolModel m(small_pages(64 * kPage), c);
  DevPtr a = 0, b = 0, big = 0, d = 0, e = 0;
  ASSERT_EQ(m.alloc(3 * kPage / 2, 0, &a), Status::ok);
  ASSERT_EQ(m.alloc(kPage / 2, 0, &b), Status::ok);
  ASSERT_EQ(m.alloc(4 * kPage, 0, &big), Status::ok);
  ASSERT_EQ(m.free(b, 0), Status::ok);
  ASSERT_EQ(m.alloc(9 * kPage / 4, 0, &d), Status::ok);
  ASSERT_EQ(m.pool.stats().physical.current, 8 * kPage);
  ASSERT_EQ(m.free(d, 0), Status::ok);
  ASSERT_EQ(m.free(a, 0), Status::ok);  // the tail's neighbour before it is free too
  // A request no cached block fits takes the slow path: the second mapping goes and the tail goes
  // home, where it merges with a's space, so both of a's pages can move into the new window: it
  // takes those and d's two, and creates 12 (13 if the tail still pinned its page).
  const std::uint64_t unmaps = m.pool.stats().unmaps;
  ASSERT_EQ(m.alloc(16 * kPage, 0, &e), Status::ok);
  EXPECT_EQ(m.pool.stats().unmaps, unmaps + 1);
  EXPECT_EQ(m.pool.stats().physical.current, 20 * kPage);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  m.free_all();
  m.pool.trim(0);
  EXPECT_EQ(m.pool.stats().physical.current, 0u);
}

// Config::max_create: growth by consecutive pages makes allocations of several granules, mapped,
// described and released whole; they never move in a stitch.
TEST(Allocator, GrowsInLargeAllocationsWhenAsked) {
  Config c;
  c.max_create = 8 * kPage;
  PoolModel m(small_pages(64 * kPage), c);
  DevPtr p = 0, q = 0;
  ASSERT_EQ(m.alloc(20 * kPage, 0, &p), Status::ok);
  EXPECT_EQ(m.pool.stats().creates, 3u) << "20 pages in allocations of 6, 7 and 7";
  EXPECT_EQ(m.driver.stats().calls(Call::map), 3u);
  EXPECT_EQ(m.driver.stats().calls(Call::set_access), 1u);
  BlockInfo info;
  ASSERT_EQ(m.pool.describe(p + 9 * kPage, &info), Status::ok);
  ASSERT_EQ(info.pages.size(), 3u);
  EXPECT_EQ(info.pages[0].size, 6 * kPage);
  EXPECT_EQ(info.pages[1].size, 7 * kPage);
  EXPECT_EQ(info.pages[2].size, 7 * kPage);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  ASSERT_EQ(m.free(p, 0), Status::ok);
  // Reused in place; trim releases only the allocations no live block touches.
  ASSERT_EQ(m.alloc(5 * kPage, 0, &q), Status::ok);
  EXPECT_EQ(q, p);
  ASSERT_EQ(m.pool.describe(q, &info), Status::ok);
  ASSERT_EQ(info.pages.size(), 1u);
  EXPECT_EQ(info.pages[0].size, 6 * kPage) << "a block's page may reach beyond it; IPC maps it whole";
  m.pool.trim(0);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.pool.stats().physical.current, 6 * kPage);
  EXPECT_EQ(m.driver.physical_in_use(), 6 * kPage);
  EXPECT_EQ(m.pool.stats().releases, 2u);
  EXPECT_EQ(m.check(), "");
  // Two blocks on one allocation, then a larger request: the free part of it cannot move (the driver
  // maps an allocation only whole), so the stitch creates rather than moves.
  DevPtr r = 0, big = 0;
  ASSERT_EQ(m.alloc(kPage, 0, &r), Status::ok);  // the sixth page, between q and the rest
  EXPECT_EQ(r, q + 5 * kPage);
  ASSERT_EQ(m.free(q, 0), Status::ok);
  const std::uint64_t creates = m.pool.stats().creates;
  ASSERT_EQ(m.alloc(12 * kPage, 0, &big), Status::ok);
  EXPECT_EQ(m.pool.stats().stitches, 0u);
  EXPECT_GT(m.pool.stats().creates, creates);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  m.free_all();
  m.pool.trim(0);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.driver.physical_in_use(), 0u);
  EXPECT_EQ(m.driver.mappings(), 0u);
}

// A free allocation of several granules moves whole into a stitch window with room for it.
TEST(Allocator, StitchMovesALargeAllocationWhole) {
  Config c;
  c.max_create = 4 * kPage;
  PoolModel m(small_pages(64 * kPage), c);
  DevPtr a = 0, b = 0, d = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 0, &a), Status::ok);
  ASSERT_EQ(m.alloc(5 * kPage, 0, &b), Status::ok);  // pages of 3 and 2 granules after a
  ASSERT_EQ(m.free(a, 0), Status::ok);
  const Stats before = m.pool.stats();
  ASSERT_EQ(m.alloc(6 * kPage, 0, &d), Status::ok);  // a's 4 do not fit in place: a stitch past b
  const Stats after = m.pool.stats();
  EXPECT_EQ(after.stitches, before.stitches + 1);
  EXPECT_EQ(after.creates, before.creates + 1) << "a's page moved, only the other 2 granules are new";
  EXPECT_EQ(after.physical.current, 11 * kPage);
  BlockInfo info;
  ASSERT_EQ(m.pool.describe(d, &info), Status::ok);
  ASSERT_EQ(info.pages.size(), 2u);
  EXPECT_EQ(info.pages[0].size, 4 * kPage);
  EXPECT_EQ(info.pages[1].size, 2 * kPage);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  m.pool.trim(0);  // unmaps a's old mapping (stale) whole
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  m.free_all();
  m.pool.trim(0);
  EXPECT_EQ(m.driver.physical_in_use(), 0u);
  EXPECT_EQ(m.driver.mappings(), 0u);
}

// A free allocation of several granules that fits no hole left still counts as free when the pool
// checks its limit: the plan is taken back, the cached memory released, and the limit holds.
TEST(Allocator, LimitHoldsWhenALargeAllocationFitsNoHole) {
  Config c;
  c.max_create = 3 * kPage;
  c.small_limit = 0;
  c.limit = 6 * kPage;
  PoolModel m(small_pages(64 * kPage), c);
  DevPtr a = 0, b = 0, c1 = 0, c2 = 0, d = 0;
  ASSERT_EQ(m.alloc(3 * kPage, 0, &a), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 0, &b), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 0, &c1), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 0, &c2), Status::ok);
  ASSERT_EQ(m.free(a, 0), Status::ok);
  ASSERT_EQ(m.free(c1, 0), Status::ok);
  ASSERT_EQ(m.free(c2, 0), Status::ok);
  // The window over c1 and c2 needs 2 more granules; a's page of 3 fits no 2 holes.
  ASSERT_EQ(m.alloc(3 * kPage + 1, 0, &d), Status::ok);
  EXPECT_LE(m.pool.stats().physical.current, c.limit);
  EXPECT_LE(m.driver.physical_in_use(), c.limit);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
}

// Out of memory with most of the device cached in a free allocation of several granules that fits no
// window: it goes back to the driver and the request is served.
TEST(Allocator, OutOfMemoryReleasesLargeAllocationsThatFitNoWindow) {
  Config c;
  c.max_create = 4 * kPage;
  c.small_limit = 0;
  PoolModel m(small_pages(8 * kPage), c);
  DevPtr a = 0, b = 0, c1 = 0, c2 = 0, c3 = 0, d = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 0, &a), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 0, &b), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 0, &c1), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 0, &c2), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 0, &c3), Status::ok);
  for (DevPtr p : {a, c1, c2, c3}) ASSERT_EQ(m.free(p, 0), Status::ok);
  ASSERT_EQ(m.alloc(5 * kPage, 0, &d), Status::ok);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
}

TEST(Allocator, SameStreamReusesAtOnceWithoutDriverCalls) {
  PoolModel m(small_pages(16 << 20), no_limit());
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(5 * kPage, 7, &a), Status::ok);
  ASSERT_EQ(m.free(a, 7), Status::ok);
  std::uint64_t calls = m.driver.stats().calls(Call::create) + m.driver.stats().calls(Call::map);
  for (int i = 0; i < 100; ++i) {
    ASSERT_EQ(m.alloc(5 * kPage - 100, 7, &b), Status::ok);
    EXPECT_EQ(b, a);
    ASSERT_EQ(m.free(b, 7), Status::ok);
  }
  EXPECT_EQ(m.driver.stats().calls(Call::create) + m.driver.stats().calls(Call::map), calls);
  EXPECT_EQ(m.driver.stats().calls(Call::event_record), 0u) << "the hot path makes no driver call";
  // Only the first allocation took the slow path (it created and mapped pages), and it was timed.
  const Stats st = m.pool.stats();
  EXPECT_EQ(st.slow_allocs, 1u);
  EXPECT_GT(st.slow_ns, 0u);
  EXPECT_EQ(st.allocs, 101u);
}

TEST(Allocator, OtherStreamWaitsForTheWorkBeforeTheFree) {
  PoolModel m(small_pages(16 << 20), no_limit());
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);  // a kernel still using a
  ASSERT_EQ(m.free(a, 1), Status::ok);
  // Rather than grow, the pool waits for stream 1's work; it never hands a out before that work is done.
  std::uint64_t waits = m.driver.stats().calls(Call::event_synchronize);
  ASSERT_EQ(m.alloc(4 * kPage, 2, &b), Status::ok);
  EXPECT_EQ(b, a);
  EXPECT_EQ(m.driver.stats().calls(Call::event_synchronize), waits + 1);
  EXPECT_EQ(m.pool.stats().physical.peak, 4 * kPage);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
}

TEST(Allocator, OtherStreamGetsOtherMemoryWhileTheWorkRuns) {
  Config c;
  c.stitch = false;  // a pool that may not move pages grows instead of waiting
  PoolModel m(small_pages(16 << 20), c);
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  ASSERT_EQ(m.alloc(4 * kPage, 2, &b), Status::ok);
  EXPECT_NE(b, a) << "stream 2 must not get memory stream 1 may still use";
  ASSERT_EQ(m.free(b, 2), Status::ok);
  m.driver.complete_work(1);
  DevPtr d = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 2, &d), Status::ok);
  EXPECT_TRUE(d == a || d == b);
  EXPECT_EQ(m.pool.stats().physical.peak, 8 * kPage);
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Allocator, CrossStreamSmallPiecesWaitToo) {
  PoolModel m(small_pages(16 << 20), pieces());
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4096, 1, &a), Status::ok);
  m.driver.enqueue_work(1);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  std::uint64_t waits = m.driver.stats().calls(Call::event_synchronize);
  ASSERT_EQ(m.alloc(4096, 2, &b), Status::ok);
  if (b == a) {
    EXPECT_GT(m.driver.stats().calls(Call::event_synchronize), waits) << "reused before the work was done";
  }
  EXPECT_EQ(m.pool.validate(), "");
}

// A block that stream 1 freed while its work still runs may become a chunk at once on stream 1; the
// chunk's free rest must then wait for that work like the block did, not settle on an older event
// (here the one recorded at stream 1's first free, queried again while stream 1 captures).
TEST(Allocator, ChunkCarvedFromABusyFreeWaitsForItsWork) {
  PoolModel m(small_pages(16 << 20), Config{});
  DevPtr y = 0, spacer = 0, l = 0, z = 0, p = 0, big = 0, r = 0;
  ASSERT_EQ(m.alloc(2 * kPage, 1, &y), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 1, &spacer), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 1, &l), Status::ok);
  ASSERT_EQ(m.alloc(kPage, 1, &spacer), Status::ok);
  ASSERT_EQ(m.free(y, 1), Status::ok);
  ASSERT_EQ(m.alloc(2 * kPage, 2, &z), Status::ok);  // the slow path records on stream 1: done
  ASSERT_EQ(z, y);
  m.driver.enqueue_work(1);  // a kernel on stream 1 uses l
  ASSERT_EQ(m.free(l, 1), Status::ok);
  ASSERT_EQ(m.alloc(4096, 1, &p), Status::ok);  // stream 1 makes l a chunk at once
  ASSERT_EQ(p, l);
  m.driver.set_capturing(1, true);
  ASSERT_EQ(m.alloc(3 * kPage, 2, &big), Status::ok);  // the slow path queries stream 1's old event
  ASSERT_EQ(m.alloc(8192, 2, &r), Status::ok);
  EXPECT_FALSE(r >= l && r < l + kPage) << "stream 2 got l+" << (r - l) << " while stream 1's work on l runs";
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Allocator, NeverRecordsOnACapturingStream) {
  PoolModel m(small_pages(16 << 20), no_limit());
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  m.driver.set_capturing(1, true);
  ASSERT_EQ(m.alloc(4 * kPage, 2, &b), Status::ok);
  EXPECT_NE(b, a) << "stream 1's free cannot settle while it captures";
  EXPECT_EQ(m.driver.stats().calls(Call::event_record), 0u);
  m.driver.set_capturing(1, false);
  m.pool.trim();
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Allocator, ForgottenStreamSettlesOnceItsWorkIsDone) {
  Config cfg;
  cfg.stitch = false;  // grows rather than waits, so a premature reuse would show
  PoolModel m(small_pages(16 << 20), cfg);
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  m.pool.forget_stream(1);  // destroyed with work pending
  std::uint64_t records = m.driver.stats().calls(Call::event_record);
  ASSERT_EQ(m.alloc(4 * kPage, 1, &b), Status::ok);
  EXPECT_NE(b, a) << "a new stream with the old handle must not inherit the old stream's frees";
  m.driver.complete_work(1);
  ASSERT_EQ(m.free(b, 1), Status::ok);
  DevPtr c = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 3, &c), Status::ok);
  EXPECT_TRUE(c == a || c == b);
  ASSERT_EQ(m.alloc(4 * kPage, 3, &c), Status::ok);
  EXPECT_TRUE(c == a || c == b);
  EXPECT_EQ(m.pool.stats().physical.peak, 8 * kPage) << "both settled and reused, nothing created";
  EXPECT_GE(m.driver.stats().calls(Call::event_record), records);
  EXPECT_EQ(m.pool.validate(), "");
}

// A block still allocated when its stream is destroyed, freed later with no stream named (the router
// does so when its wait for the device failed): "its own stream" is the dead one, not a new stream
// that got the old handle, which would take the block at once while the old stream's work still runs.
TEST(Allocator, ABlockFreedAfterItsStreamWasForgottenStaysOffANewStreamWithTheHandle) {
  Config cfg;
  cfg.stitch = false;  // grows rather than waits, so a premature reuse would show
  PoolModel m(small_pages(16 << 20), cfg);
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);  // a kernel still using a
  m.pool.forget_stream(1);   // destroyed with that work pending
  ASSERT_EQ(m.pool.free(a), Status::ok);
  m.live.erase(a);
  ASSERT_EQ(m.alloc(4 * kPage, 1, &b), Status::ok);  // a new stream with the old handle
  EXPECT_NE(b, a) << "a new stream with the old handle took a block of the destroyed stream at once";
  m.pool.trim();
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
}

// A stream of another context takes no record of the pool's event (invalid handle): the pool waits
// for the stream itself where it would have waited for the event, rather than grow.
TEST(Allocator, AStreamNoEventCanBeRecordedOnIsWaitedFor) {
  PoolModel m(small_pages(16 << 20), no_limit());
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  for (std::uint64_t n = 1; n <= 64; ++n) m.driver.fail_nth(Call::event_record, n, Status::invalid_handle);
  ASSERT_EQ(m.alloc(4 * kPage, 2, &b), Status::ok);
  EXPECT_EQ(b, a);
  EXPECT_EQ(m.driver.stats().calls(Call::stream_synchronize), 1u);
  EXPECT_EQ(m.pool.stats().physical.peak, 4 * kPage) << "grew instead of waiting for the stream";
  for (int i = 0; i < 3; ++i) m.pool.trim();
  EXPECT_EQ(m.driver.stats().calls(Call::stream_synchronize), 1u) << "waited again with nothing new to settle";
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
}

// When the stream cannot be waited for either, its free stays with it: another stream gets new memory.
TEST(Allocator, AStreamThatCanBeNeitherRecordedNorWaitedForKeepsItsFree) {
  PoolModel m(small_pages(16 << 20), no_limit());
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  for (std::uint64_t n = 1; n <= 8; ++n) {
    m.driver.fail_nth(Call::event_record, n, Status::invalid_handle);
    m.driver.fail_nth(Call::stream_synchronize, n, Status::unknown);
  }
  ASSERT_EQ(m.alloc(4 * kPage, 2, &b), Status::ok);
  EXPECT_NE(b, a) << "handed out before stream 1's work was known to be done";
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
}

// Destroyed with no record possible, its frees would never settle: the pool waits for the stream
// before it goes, and its memory serves other streams.
TEST(Allocator, AForgottenStreamNoEventCanBeRecordedOnGivesItsFreesBack) {
  Config cfg;
  cfg.stitch = false;  // grows rather than waits, so memory held back would show
  PoolModel m(small_pages(16 << 20), cfg);
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  m.driver.fail_nth(Call::event_record, 1, Status::invalid_handle);
  m.pool.forget_stream(1);
  EXPECT_EQ(m.driver.stats().calls(Call::stream_synchronize), 1u);
  ASSERT_EQ(m.alloc(4 * kPage, 3, &b), Status::ok);
  EXPECT_EQ(b, a);
  EXPECT_EQ(m.pool.stats().physical.peak, 4 * kPage);
  ASSERT_EQ(m.free(b, 3), Status::ok);
  m.pool.trim();
  EXPECT_EQ(m.pool.stats().physical.current, 0u) << "the destroyed stream's memory went back";
  EXPECT_EQ(m.pool.validate(), "");
}

// Destroyed in the middle of a capture: the pool neither records its event on the stream (the record
// would join the user's graph) nor waits for it (that breaks the capture), and its free, whose work
// may still run, is never handed to another stream.
TEST(Allocator, AForgottenCapturingStreamGetsNoRecordAndKeepsItsFree) {
  Config cfg;
  cfg.stitch = false;  // grows rather than waits, so a premature reuse would show
  PoolModel m(small_pages(16 << 20), cfg);
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(4 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  m.driver.set_capturing(1, true);
  const std::uint64_t records = m.driver.stats().calls(Call::event_record);
  m.pool.forget_stream(1);
  EXPECT_EQ(m.driver.stats().calls(Call::event_record), records) << "recorded on a capturing stream";
  EXPECT_EQ(m.driver.stats().calls(Call::stream_synchronize), 0u) << "waited for a capturing stream";
  ASSERT_EQ(m.alloc(4 * kPage, 2, &b), Status::ok);
  EXPECT_NE(b, a) << "handed out before stream 1's work was known to be done";
  m.pool.trim();
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
}

// A program that makes a stream per request: what the pool keeps of destroyed streams whose work is
// done (their state, their event) goes with them.
TEST(Allocator, StreamsDestroyedByTheThousandLeaveNothingBehind) {
  PoolModel m(small_pages(16 << 20), no_limit());
  for (StreamHandle s = 1; s <= 1000; ++s) {
    DevPtr p = 0;
    ASSERT_EQ(m.alloc(s % 2 == 0 ? 4096 : 3 * kPage, s, &p), Status::ok);
    if (s % 3 == 0) m.driver.enqueue_work(s);
    ASSERT_EQ(m.free(p, s), Status::ok);
    m.driver.complete_work(s);
    m.pool.forget_stream(s);
  }
  EXPECT_LE(m.driver.live_events(), 2u);
  EXPECT_LE(m.pool.stats().physical.peak, 4 * kPage);
  m.pool.trim();
  EXPECT_EQ(m.pool.stats().physical.current, 0u);
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Allocator, RefreshAccessCoversEveryMapping) {
  PoolModel m(small_pages(16 << 20), no_limit());
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(3 * kPage, 0, &a), Status::ok);
  ASSERT_EQ(m.alloc(100, 0, &b), Status::ok);
  std::uint64_t before = m.driver.stats().calls(Call::set_access);
  ASSERT_EQ(m.pool.refresh_access(), Status::ok);
  EXPECT_GT(m.driver.stats().calls(Call::set_access), before);
  EXPECT_EQ(m.check(), "");
}

TEST(Allocator, StitchesScatteredFreePagesInsteadOfCreating) {
  PoolModel m(small_pages(64 << 20), no_limit());
  std::vector<DevPtr> ps(16);
  for (auto& p : ps) ASSERT_EQ(m.alloc(2 * kPage, 0, &p), Status::ok);
  for (std::size_t i = 0; i < ps.size(); i += 2) ASSERT_EQ(m.free(ps[i], 0), Status::ok);
  Stats before = m.pool.stats();
  DevPtr big = 0;
  ASSERT_EQ(m.alloc(16 * kPage, 0, &big), Status::ok);
  Stats after = m.pool.stats();
  EXPECT_EQ(after.physical.current, before.physical.current) << "no new memory: the free pages were stitched";
  EXPECT_GE(after.stitches, 1u);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
  BlockInfo info;
  ASSERT_EQ(m.pool.describe(big + 5 * kPage + 3, &info), Status::ok);
  EXPECT_EQ(info.base, big);
  EXPECT_EQ(info.pages.size(), 16u);
}

TEST(Allocator, WithoutStitchingItCreates) {
  Config c;
  c.stitch = false;
  PoolModel m(small_pages(64 << 20), c);
  std::vector<DevPtr> ps(16);
  for (auto& p : ps) ASSERT_EQ(m.alloc(2 * kPage, 0, &p), Status::ok);
  for (std::size_t i = 0; i < ps.size(); i += 2) ASSERT_EQ(m.free(ps[i], 0), Status::ok);
  std::size_t before = m.pool.stats().physical.current;
  ASSERT_EQ(m.alloc(16 * kPage, 0), Status::ok);
  EXPECT_EQ(m.pool.stats().stitches, 0u);
  EXPECT_GT(m.pool.stats().physical.current, before);
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Allocator, WhatFitsUnderPlainMallocFitsHere) {
  // Capacity for 32 pages. Fill it, free every other page, then ask for all 16 free pages at once.
  PoolModel m(small_pages(32 * kPage), no_limit());
  std::vector<DevPtr> ps(32);
  for (auto& p : ps) ASSERT_EQ(m.alloc(kPage, 0, &p), Status::ok);
  DevPtr extra = 0;
  EXPECT_EQ(m.alloc(kPage, 0, &extra), Status::out_of_memory);
  EXPECT_EQ(m.pool.validate(), "");
  for (std::size_t i = 0; i < ps.size(); i += 2) ASSERT_EQ(m.free(ps[i], 0), Status::ok);
  DevPtr big = 0;
  ASSERT_EQ(m.alloc(16 * kPage, 0, &big), Status::ok);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.check(), "");
}

// Without stitching no free page moves: a request that no cached block fits must still get the device
// memory those blocks hold, as from a plain caching allocator, which empties its cache before failing.
// (GLAKE_STITCH=0, and GLAKE_LIMIT, where the device has room but the pool may hold no more.)
TEST(Allocator, WithoutStitchingOutOfMemoryGivesTheCacheBackFirst) {
  for (const bool limit : {false, true}) {
    SCOPED_TRACE(limit ? "limit" : "device");
    Config c;
    c.stitch = false;
    if (limit) c.limit = 16 * kPage;
    PoolModel m(small_pages(limit ? 64 * kPage : 16 * kPage), c);
    DevPtr a = 0, b = 0, d = 0, big = 0;
    ASSERT_EQ(m.alloc(6 * kPage, 0, &a), Status::ok);
    ASSERT_EQ(m.alloc(4 * kPage, 0, &b), Status::ok);
    ASSERT_EQ(m.alloc(6 * kPage, 0, &d), Status::ok);
    ASSERT_EQ(m.free(a, 0), Status::ok);
    ASSERT_EQ(m.free(d, 0), Status::ok);
    // 12 pages cached, 4 live: 10 fit, but in no cached block.
    ASSERT_EQ(m.alloc(10 * kPage, 0, &big), Status::ok);
    EXPECT_EQ(m.pool.stats().ooms, 0u);
    EXPECT_LE(m.pool.stats().physical.peak, 16 * kPage);
    EXPECT_EQ(m.pool.validate(), "");
    EXPECT_EQ(m.check(), "");
  }
}

TEST(Allocator, AHugeRequestFailsAtOnceAndKeepsNothing) {
  PoolModel m(small_pages(64 * kPage), no_limit());
  DevPtr p = 0;
  ASSERT_EQ(m.alloc(2 * kPage, 0, &p), Status::ok);
  std::uint64_t creates = m.driver.stats().calls(Call::create);
  std::uint64_t reserves = m.driver.stats().calls(Call::reserve);
  EXPECT_EQ(m.alloc(200 * kPage, 0), Status::out_of_memory);
  EXPECT_EQ(m.driver.stats().calls(Call::create), creates) << "nothing created for a request that cannot fit";
  EXPECT_EQ(m.driver.stats().calls(Call::reserve), reserves) << "no address space kept for it either";
  EXPECT_EQ(m.pool.stats().physical.current, 2 * kPage);
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Allocator, OutOfMemoryReclaimsWhatOtherStreamsFreed) {
  PoolModel m(small_pages(16 * kPage), no_limit());
  DevPtr a = 0;
  ASSERT_EQ(m.alloc(16 * kPage, 1, &a), Status::ok);
  m.driver.enqueue_work(1);
  ASSERT_EQ(m.free(a, 1), Status::ok);
  DevPtr b = 0;
  // Stream 2 may not use a until stream 1's work is done; before out-of-memory the pool waits for it.
  ASSERT_EQ(m.alloc(16 * kPage, 2, &b), Status::ok);
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Allocator, LimitIsOutOfMemoryAndThePoolStaysWhole) {
  Config c;
  c.limit = 8 * kPage;
  PoolModel m(small_pages(64 << 20), c);
  DevPtr a = 0, b = 0;
  ASSERT_EQ(m.alloc(6 * kPage, 0, &a), Status::ok);
  EXPECT_EQ(m.alloc(3 * kPage, 0, &b), Status::out_of_memory);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_LE(m.pool.stats().physical.peak, 8 * kPage);
  ASSERT_EQ(m.alloc(2 * kPage, 0, &b), Status::ok);
  EXPECT_EQ(m.pool.stats().ooms, 1u);
}

TEST(Allocator, TrimReturnsFreeMemory) {
  PoolModel m(small_pages(64 << 20), no_limit());
  std::vector<DevPtr> ps(10);
  for (auto& p : ps) ASSERT_EQ(m.alloc(3 * kPage, 0, &p), Status::ok);
  DevPtr keep = 0;
  ASSERT_EQ(m.alloc(100, 0, &keep), Status::ok);
  for (auto p : ps) ASSERT_EQ(m.free(p, 0), Status::ok);
  m.pool.trim();
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.pool.stats().physical.current, kPage) << "only the page holding the live small block";
  EXPECT_EQ(m.driver.physical_in_use(), kPage);
  EXPECT_EQ(m.check(), "");
  m.free_all();
  m.pool.trim();
  EXPECT_EQ(m.driver.physical_in_use(), 0u);
  EXPECT_EQ(m.pool.validate(), "");
}

// IPC export: descriptors of a live block's pages, and none once the block no longer lies on them (the
// check and the export are one step against trims: see the shim's
// Process.IpcOfABlockFreedAndTrimmedMidExportSendsNoReleasedPage).
TEST(Allocator, ExportPagesOnlyOfABlockStillOnThem) {
  PoolModel m(small_pages(16 << 20), no_limit());
  DevPtr p = 0;
  ASSERT_EQ(m.alloc(3 * kPage, 0, &p), Status::ok);
  BlockInfo info;
  ASSERT_EQ(m.pool.describe(p, &info), Status::ok);
  ASSERT_EQ(info.pages.size(), 3u);
  int fds[2] = {-1, -1};
  ASSERT_EQ(m.pool.export_pages(p, info.pages, 1, 2, fds), Status::ok);
  for (int fd : fds) {
    EXPECT_GE(fd, 0);
    if (fd >= 0) ::close(fd);
  }
  EXPECT_EQ(m.pool.export_pages(p + kPage, info.pages, 0, 1, fds), Status::not_found) << "not the block's start";
  std::vector<PhysPage> other = info.pages;
  other.pop_back();
  EXPECT_EQ(m.pool.export_pages(p, other, 0, 1, fds), Status::not_found) << "not the block's pages";
  ASSERT_EQ(m.free(p, 0), Status::ok);
  m.pool.trim(0);
  EXPECT_EQ(m.pool.export_pages(p, info.pages, 0, 3, fds), Status::not_found) << "freed and given back";
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Allocator, StatisticsTrackPeaks) {
  PoolModel m(small_pages(64 << 20), no_limit());
  DevPtr a = 0;
  ASSERT_EQ(m.alloc(10 * kPage - 1, 0, &a), Status::ok);
  ASSERT_EQ(m.free(a, 0), Status::ok);
  Stats s = m.pool.stats();
  EXPECT_EQ(s.requested.peak, 10 * kPage - 1);
  EXPECT_EQ(s.blocks.peak, 10 * kPage);
  EXPECT_EQ(s.physical.peak, 10 * kPage);
  EXPECT_EQ(s.requested.current, 0u);
  EXPECT_EQ(s.creates, 10u);
  EXPECT_GT(s.driver_ns, 0u);
  m.pool.reset_peaks();
  EXPECT_EQ(m.pool.stats().requested.peak, 0u);
}

TEST(Allocator, DestructionReturnsEverything) {
  HostDriver d(small_pages(64 << 20));
  {
    Allocator pool(d, Config{});
    DevPtr p = 0;
    for (int i = 0; i < 10; ++i) ASSERT_EQ(pool.allocate(static_cast<std::size_t>(i) * 50000 + 1, 0, &p), Status::ok);
  }
  EXPECT_EQ(d.physical_in_use(), 0u);
  EXPECT_EQ(d.mappings(), 0u);
  EXPECT_EQ(d.reserved_bytes(), 0u);
  EXPECT_EQ(d.live_events(), 0u);
}

// Random operations on three streams against the reference model; every live block's bytes are
// checked regularly, validate() after every operation. The capacity forces stitching and OOMs.
void run_property(std::uint32_t seed, Config config, int ops) {
  PoolModel m(small_pages(96 * kPage), config);
  std::mt19937_64 rng(seed);
  std::vector<DevPtr> order;
  for (int op = 0; op < ops; ++op) {
    int what = static_cast<int>(rng() % 100);
    StreamHandle s = 1 + rng() % 3;
    if (what < 50 || m.live.empty()) {
      std::size_t size = (rng() % 4 == 0) ? 1 + rng() % (kPage / 2) : 1 + rng() % (12 * kPage);
      DevPtr p = 0;
      Status r = m.alloc(size, s, &p);
      ASSERT_TRUE(r == Status::ok || r == Status::out_of_memory) << status_name(r);
      if (r == Status::out_of_memory) {
        ASSERT_GT(m.live_bytes() + size, 96 * kPage / 3) << "out of memory with the pool nearly empty";
      }
    } else if (what < 95) {
      auto it = m.live.begin();
      std::advance(it, static_cast<long>(rng() % m.live.size()));
      StreamHandle fs = rng() % 4 == 0 ? s : it->second.stream;
      if (rng() % 3 == 0) m.driver.enqueue_work(it->second.stream);
      ASSERT_EQ(m.free(it->first, fs), Status::ok);
    } else if (what < 98) {
      m.driver.complete_work(s);
    } else {
      m.pool.trim(rng() % 2 ? 0 : 8 * kPage);
    }
    std::string v = m.pool.validate();
    ASSERT_EQ(v, "") << "after op " << op << " (seed " << seed << ")";
    if (op % 16 == 0) {
      ASSERT_EQ(m.check(), "") << "after op " << op << " (seed " << seed << ")";
    }
  }
  ASSERT_EQ(m.check(), "");
  m.free_all();
  m.pool.trim();
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.driver.physical_in_use(), 0u) << "everything returned after trim";
}

TEST(AllocatorProperty, RandomOperationsKeepEveryByte) {
  std::uint32_t seed = 0;
  for (const Variant& v : variants(kPage)) {
    SCOPED_TRACE(v.name);
    for (int i = 0; i < 4; ++i) run_property(++seed, v.config, 1500);
  }
}

TEST(AllocatorProperty, RandomOperationsWithoutStitching) {
  Config c;
  c.stitch = false;
  for (std::uint32_t seed = 11; seed <= 13; ++seed) run_property(seed, c, 800);
}

// Fault injection: for each kind of call the pool makes, fail its n-th call for several n while a
// workload runs. Every failure reaches the caller as an error, the pool stays valid, no byte of a
// live block changes, and after freeing everything and trimming nothing is leaked.
class AllocatorFaults : public ::testing::TestWithParam<Call> {};

TEST_P(AllocatorFaults, EveryFailureLeavesThePoolWhole) {
  const Call kind = GetParam();
  const std::vector<Variant> vs = variants(kPage);
  for (std::uint64_t nth = 1; nth <= 12 * vs.size(); ++nth) {
    const Variant& v = vs[(nth - 1) / 12];  // 12 failure points per variant
    SCOPED_TRACE(v.name);
    PoolModel m(small_pages(48 * kPage), v.config);
    std::mt19937_64 rng(nth);
    m.driver.fail_nth(kind, nth, kind == Call::create ? Status::out_of_memory : Status::unknown);
    int failures = 0;
    ASSERT_NO_FATAL_FAILURE(churn(m, rng, kPage, 300, [&](int op, Status r) {
      if (r != Status::ok) ++failures;
      ASSERT_EQ(m.pool.validate(), "") << call_name(kind) << " #" << nth << " op " << op;
    }));
    ASSERT_EQ(m.check(), "") << call_name(kind) << " #" << nth;
    m.driver.clear_faults();
    m.free_all();
    m.pool.trim();
    ASSERT_EQ(m.pool.validate(), "");
    // Quarantined pages (mapped but not accessible) are the only memory a pool may keep after trim.
    EXPECT_EQ(m.driver.physical_in_use(), m.pool.stats().physical.current) << call_name(kind) << " #" << nth;
    if (kind != Call::set_access) {
      EXPECT_EQ(m.driver.physical_in_use(), 0u) << call_name(kind) << " #" << nth;
    }
    (void)failures;
  }
}

INSTANTIATE_TEST_SUITE_P(EveryCall, AllocatorFaults,
                         ::testing::Values(Call::reserve, Call::create, Call::release, Call::map, Call::unmap,
                                           Call::set_access, Call::event_create, Call::event_record,
                                           Call::event_query, Call::event_synchronize),
                         [](const auto& info) { return std::string(call_name(info.param)); });

// Pages left mapped without access (a failed grant, then a failed unmap) are held for good and never
// used: not cached memory, so neither cudaMemGetInfo's free nor trim's minimum to keep counts them.
TEST(AllocatorFaults, QuarantinedPagesAreNotCached) {
  PoolModel m(small_pages(48 * kPage), no_limit());
  m.driver.fail_nth(Call::set_access, 1, Status::unknown);
  m.driver.fail_nth(Call::unmap, 1, Status::unknown);  // of the first of the four pages
  DevPtr p = 0;
  EXPECT_EQ(m.alloc(4 * kPage, 0, &p), Status::unknown);
  m.driver.clear_faults();
  ASSERT_EQ(m.pool.validate(), "");
  ASSERT_EQ(m.pool.stats().physical.current, 4 * kPage);
  EXPECT_EQ(m.pool.cached_bytes(), 3 * kPage) << "the quarantined page counted as cached";
  m.pool.trim(kPage);
  EXPECT_EQ(m.pool.stats().physical.current, 2 * kPage) << "trim took the page it had to keep";
  EXPECT_EQ(m.pool.cached_bytes(), kPage);
  m.pool.trim(0);
  EXPECT_EQ(m.pool.cached_bytes(), 0u);
  EXPECT_EQ(m.pool.stats().physical.current, kPage) << "the quarantined page is held for good";
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(AllocatorFaults, ErrorsReachTheCaller) {
  PoolModel m(small_pages(48 * kPage), Config{});
  m.driver.fail_nth(Call::map, 1, Status::unknown);
  DevPtr p = 0;
  EXPECT_EQ(m.alloc(3 * kPage, 0, &p), Status::unknown);
  EXPECT_EQ(p, 0u);
  EXPECT_EQ(m.pool.validate(), "");
  EXPECT_EQ(m.pool.stats().ooms, 0u) << "a driver error is not out of memory";
  EXPECT_EQ(m.alloc(3 * kPage, 0, &p), Status::ok);
  m.driver.fail_nth(Call::create, 1, Status::out_of_memory);
  m.driver.fail_nth(Call::create, 2, Status::out_of_memory);  // the retry after reclaiming fails too
  EXPECT_EQ(m.alloc(20 * kPage, 0, &p), Status::out_of_memory);
  EXPECT_EQ(m.pool.stats().reclaims, 1u);
  EXPECT_EQ(m.pool.stats().ooms, 1u);
  EXPECT_EQ(m.pool.validate(), "");
  m.driver.fail_nth(Call::reserve, 1, Status::invalid_value);
  EXPECT_EQ(m.pool.validate(), "");
}

TEST(Config, ParsesBytes) {
  std::size_t v = 0;
  EXPECT_TRUE(parse_bytes("512", &v));
  EXPECT_EQ(v, 512u);
  EXPECT_TRUE(parse_bytes("64K", &v));
  EXPECT_EQ(v, 64u << 10);
  EXPECT_TRUE(parse_bytes("2MiB", &v));
  EXPECT_EQ(v, 2u << 20);
  EXPECT_TRUE(parse_bytes("3g", &v));
  EXPECT_EQ(v, std::size_t{3} << 30);
  for (const char* bad : {"", "-1", "abc", "12Q", "1.5G", "99999999999999999999", "20000000000T"})
    EXPECT_FALSE(parse_bytes(bad, &v)) << bad;
}

// strtoull skips leading white space and takes a sign: " -1" was read as 2^64-1 (GLAKE_LIMIT " -1":
// no limit; GLAKE_VA_RESERVE " -1": a reservation that wraps to 0 bytes, so every cudaMalloc failed
// with no line on stderr).
TEST(Config, ByteCountsStartWithADigit) {
  std::size_t v = 0;
  for (const char* bad : {" -1", "\t-1", " -1K", "+5G", " 5G"}) EXPECT_FALSE(parse_bytes(bad, &v)) << "'" << bad << "'";
}

TEST(Config, BadValuesAreNamedAndDefaulted) {
  setenv("GLAKE_STITCH", "maybe", 1);
  setenv("GLAKE_LIMIT", "lots", 1);
  setenv("GLAKE_SMALL_LIMIT", "64K", 1);
  std::vector<std::string> errors;
  Config c = config_from_env(&errors);
  unsetenv("GLAKE_STITCH");
  unsetenv("GLAKE_LIMIT");
  unsetenv("GLAKE_SMALL_LIMIT");
  ASSERT_EQ(errors.size(), 2u);
  EXPECT_NE(errors[0].find("GLAKE_STITCH='maybe'"), std::string::npos) << errors[0];
  EXPECT_NE(errors[0].find("accepted"), std::string::npos);
  EXPECT_NE(errors[1].find("GLAKE_LIMIT"), std::string::npos);
  EXPECT_TRUE(c.stitch);
  EXPECT_EQ(c.limit, 0u);
  EXPECT_EQ(c.small_limit, 64u << 10);
}

TEST(Config, PlacementVariables) {
  setenv("GLAKE_SMALL_LIMIT", "0", 1);  // no shared chunks
  setenv("GLAKE_MAX_CREATE", "32M", 1);
  std::vector<std::string> errors;
  Config c = config_from_env(&errors);
  EXPECT_TRUE(errors.empty());
  EXPECT_EQ(c.small_limit, 0u);
  EXPECT_EQ(c.max_create, 32u << 20);
  setenv("GLAKE_MAX_CREATE", "big", 1);
  c = config_from_env(&errors);
  unsetenv("GLAKE_SMALL_LIMIT");
  unsetenv("GLAKE_MAX_CREATE");
  ASSERT_EQ(errors.size(), 1u);
  EXPECT_NE(errors[0].find("GLAKE_MAX_CREATE='big'"), std::string::npos) << errors[0];
  EXPECT_EQ(c.max_create, 0u);
}

}  // namespace
}  // namespace glake::pool::testing
