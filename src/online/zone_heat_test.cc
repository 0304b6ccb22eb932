// What ZoneHeat decides without a kernel: parsing device-mapper's statistics replies and which
// part of a candidate zone is cold. The replies are in the kernel's format (dm-stats.c); the same
// class against a real kernel's statistics runs in the guest (tests/vm/guest/dm_in_guest.cc).
#include "online/zone_heat.h"

#include <gtest/gtest.h>

namespace ds::online {
namespace {

using std::chrono::milliseconds;
constexpr uint64_t kMiB = 1u << 20;

TEST(ZoneHeatTest, ParsesStatsPrint) {
  // Two areas of 1 MiB: the first read 3 times and written 5 times with 1 I/O in flight, the
  // second untouched; the second line carries a histogram, which is ignored.
  auto a = ParseStatsPrint(
      "0+2048 3 0 24 1 5 2 40 3 1 4 4 1 3\n"
      "2048+2048 0 0 0 0 0 0 0 0 0 0 0 0 0 0:0:0\n");
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_EQ(a->size(), 2u);
  EXPECT_EQ((*a)[0].start, 0u);
  EXPECT_EQ((*a)[0].ios, 8u);
  EXPECT_EQ((*a)[0].inflight, 1u);
  EXPECT_EQ((*a)[1].start, 2048u);
  EXPECT_EQ((*a)[1].ios, 0u);
  EXPECT_TRUE(ParseStatsPrint("").ok());
  for (const char* bad : {"0+2048 1 2 3\n", "x+1 0 0 0 0 0 0 0 0 0 0 0 0 0\n", "0+0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"})
    EXPECT_EQ(ParseStatsPrint(bad).status().code(), Code::kCorrupt) << bad;
}

TEST(ZoneHeatTest, ListsOnlyItsOwnRegions) {
  const char* reply =
      "0: 0+131072 2048 diskseal-heat -\n"
      "1: 0+1000 100 dmstats -\n"
      "7: 2048+4096 2048 diskseal-heat - precise_timestamps\n"
      "garbage\n"
      "x: 0+1 1 diskseal-heat -\n";
  EXPECT_EQ(ParseStatsList(reply, kStatsProgram), (std::vector<uint64_t>{0, 7}));
  EXPECT_TRUE(ParseStatsList("", kStatsProgram).empty());
}

// Areas of 1 MiB; I/O seen in areas 3 and 9 at t0.
class ColdRunTest : public ::testing::Test {
 protected:
  ZoneHeat heat{"vol", 64 * kMiB, kMiB, 16};
  ZoneHeat::Clock::time_point t0 = ZoneHeat::Clock::now();
  void SetUp() override {
    std::vector<AreaCount> first, second;
    for (uint64_t i = 0; i < 16; ++i) first.push_back({i * 2048, 10, 0});
    heat.Record(first, t0 - milliseconds(5000));  // the baseline: nothing counts as new yet
    for (uint64_t i = 0; i < 16; ++i) second.push_back({i * 2048, i == 3 ? 11u : 10u, i == 9 ? 1u : 0u});
    heat.Record(second, t0);
  }
};

TEST_F(ColdRunTest, StopsBeforeTheFirstBusyArea) {
  const auto m = milliseconds(1000);
  // From the start: areas 0..2 are cold, area 3 is busy.
  EXPECT_EQ(heat.ColdRun(0, 8 * kMiB, false, t0, m), 3 * kMiB);
  // From the middle of area 1: up to area 3's start.
  EXPECT_EQ(heat.ColdRun(kMiB + 4096, 8 * kMiB, false, t0, m), 2 * kMiB - 4096);
  // Starting in a busy area: nothing.
  EXPECT_EQ(heat.ColdRun(3 * kMiB + 512, 4 * kMiB, false, t0, m), 0u);
  // After it: areas 4..8 cold, area 9 busy (an I/O in flight); shorter than max when max ends first.
  EXPECT_EQ(heat.ColdRun(4 * kMiB, 16 * kMiB, false, t0, m), 5 * kMiB);
  EXPECT_EQ(heat.ColdRun(4 * kMiB, 2 * kMiB + 7, false, t0, m), 2 * kMiB + 7);
  // Backward: from the end of [4 MiB, 10 MiB) area 9 is busy at once; of [4, 9) all is cold.
  EXPECT_EQ(heat.ColdRun(4 * kMiB, 6 * kMiB, true, t0, m), 0u);
  EXPECT_EQ(heat.ColdRun(4 * kMiB, 5 * kMiB, true, t0, m), 5 * kMiB);
  EXPECT_EQ(heat.ColdRun(0, 8 * kMiB, true, t0, m), 4 * kMiB);  // down to area 3's end
  // Areas never sampled count as cold.
  EXPECT_EQ(heat.ColdRun(20 * kMiB, 8 * kMiB, false, t0, m), 8 * kMiB);
}

TEST_F(ColdRunTest, BusyAreasCoolDownAfterTheMemory) {
  const auto m = milliseconds(1000);
  EXPECT_EQ(heat.ColdRun(0, 8 * kMiB, false, t0 + milliseconds(999), m), 3 * kMiB);
  EXPECT_EQ(heat.ColdRun(0, 8 * kMiB, false, t0 + milliseconds(1000), m), 8 * kMiB);
  // A later sample with no new I/O keeps the old time; new I/O renews it.
  std::vector<AreaCount> same;
  for (uint64_t i = 0; i < 16; ++i) same.push_back({i * 2048, i == 3 ? 11u : 10u, 0});
  heat.Record(same, t0 + milliseconds(1500));
  EXPECT_EQ(heat.ColdRun(0, 16 * kMiB, false, t0 + milliseconds(1500), m), 16 * kMiB);
  same[5].ios = 12;
  heat.Record(same, t0 + milliseconds(1600));
  EXPECT_EQ(heat.ColdRun(0, 16 * kMiB, false, t0 + milliseconds(1600), m), 5 * kMiB);
}

}  // namespace
}  // namespace ds::online
