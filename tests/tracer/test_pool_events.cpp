// tests/tracer/test_pool_events.cpp: the events a traced pool emits (all under its lock, in the order
// of its changes; pool/observer.h) tell a consistent story even when driver calls fail: a page created
// but never mapped (its map failed) still has its create, and its release when trim gives it back; the
// counts match the pool's statistics. Many threads: test_recorder_threads.cpp.
#include <random>
#include <string>

#include <gtest/gtest.h>

#include "tests/pool/allocator_fixture.h"
#include "tests/tracer/recorder_test_util.h"

namespace glake::tracer {
namespace {

using pool::Call;
using pool::Status;

constexpr std::size_t kPage = 64 << 10;

void expect_matches_stats(const Trace& t, const pool::Stats& st, std::uint64_t page, const std::string& what) {
  testing_util::PoolEventCounts c;
  ASSERT_EQ(testing_util::check_pool_events(t, page, &c), "") << what;
  EXPECT_EQ(c.ops[Op::alloc], st.allocs) << what;
  EXPECT_EQ(c.ops[Op::free], st.frees) << what;
  EXPECT_EQ(c.ops[Op::create], st.creates) << what;
  EXPECT_EQ(c.ops[Op::release], st.releases) << what;
  EXPECT_EQ(c.ops[Op::map], st.maps) << what;
  EXPECT_EQ(c.ops[Op::unmap], st.unmaps) << what;
  EXPECT_EQ(c.ops[Op::stitch], st.stitches) << what;
  EXPECT_EQ(c.ops[Op::oom], st.ooms) << what;
  EXPECT_EQ(c.physical, static_cast<std::int64_t>(st.physical.current)) << what;
}

TEST(PoolEvents, CreatedButNotMappedStillHasItsCreateAndRelease) {
  pool::testing::PoolModel m(pool::testing::small_pages(48 * kPage, kPage), pool::Config{});
  Recorder r(RecorderOptions{});
  PoolTraceObserver observer(&r);
  m.pool.set_observer(&observer);
  m.driver.fail_nth(Call::map, 2, Status::unknown);  // the second page's map: after two creates
  pool::DevPtr p = 0;
  EXPECT_EQ(m.alloc(3 * kPage, 0, &p), Status::unknown);
  pool::Stats st = m.pool.stats();
  ASSERT_GE(st.creates, 2u);
  EXPECT_EQ(st.maps, 1u);
  m.pool.trim();
  st = m.pool.stats();
  EXPECT_EQ(st.physical.current, 0u);
  Trace t = r.collect();
  m.pool.set_observer(nullptr);
  expect_matches_stats(t, st, kPage, "map #2 failed");
  EXPECT_EQ(t.events.back().op, Op::release);
}

// Random work with one driver call failing now and then (each kind in turn, as in the pool's own fault
// tests), trims among it, then everything freed and trimmed.
class PoolEventsFaults : public ::testing::TestWithParam<Call> {};

TEST_P(PoolEventsFaults, EveryFailureKeepsTheEventsConsistent) {
  const Call kind = GetParam();
  for (std::uint64_t nth = 1; nth <= 8; ++nth) {
    const std::string what = std::string(pool::call_name(kind)) + " #" + std::to_string(nth);
    pool::testing::PoolModel m(pool::testing::small_pages(48 * kPage, kPage), pool::Config{});
    Recorder r(RecorderOptions{});
    PoolTraceObserver observer(&r);
    m.pool.set_observer(&observer);
    std::mt19937_64 rng(nth);
    m.driver.fail_nth(kind, nth, kind == Call::create ? Status::out_of_memory : Status::unknown);
    ASSERT_NO_FATAL_FAILURE(pool::testing::churn(m, rng, kPage, 300, [](int, Status) {}));
    m.driver.clear_faults();
    m.free_all();
    m.pool.trim();
    Trace t = r.collect();
    m.pool.set_observer(nullptr);
    ASSERT_NO_FATAL_FAILURE(expect_matches_stats(t, m.pool.stats(), kPage, what));
  }
}

INSTANTIATE_TEST_SUITE_P(EveryCall, PoolEventsFaults,
                         ::testing::Values(Call::reserve, Call::create, Call::release, Call::map, Call::unmap,
                                           Call::set_access, Call::event_query),
                         [](const auto& info) { return std::string(pool::call_name(info.param)); });

}  // namespace
}  // namespace glake::tracer
