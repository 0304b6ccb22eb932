// The range gate in front of the served view: I/O to a held range waits until it is opened again
// (and then goes through the swapped-in view); I/O elsewhere does not wait.
#include "fuse/gated_device.h"

#include <future>
#include <thread>

#include <gtest/gtest.h>

#include "io/mem_device.h"

namespace ds::fuse {
namespace {

constexpr uint64_t kSize = 1 << 20;

std::vector<uint8_t> Filled(size_t n, uint8_t v) { return std::vector<uint8_t>(n, v); }

TEST(GatedDeviceTest, HeldRangeWaitsUntilOpenOthersGoOn) {
  MemDevice old_view("old", kSize);
  auto fresh = std::make_unique<MemDevice>("new", kSize);
  MemDevice* new_view = fresh.get();
  GatedDevice gate(&old_view);
  ASSERT_TRUE(gate.Hold(64 << 10, 64 << 10).ok());
  EXPECT_TRUE(gate.held());

  // A write into the held range is parked; the future stays unready while the range is held.
  auto a = Filled(4096, 0xAA);
  std::future<Status> parked = std::async(std::launch::async, [&] { return gate.WriteAt(96 << 10, a); });
  // Elsewhere: reads and writes complete while the range is held (they would hang otherwise). The
  // write touching the first byte after the range, and the one ending right before it, pass too.
  auto b = Filled(4096, 0xBB);
  EXPECT_TRUE(gate.WriteAt(0, b).ok());
  EXPECT_TRUE(gate.WriteAt((64 << 10) - 4096, b).ok());
  EXPECT_TRUE(gate.WriteAt(128 << 10, b).ok());
  std::vector<uint8_t> got(4096);
  EXPECT_TRUE(gate.ReadAt(0, got).ok());
  EXPECT_EQ(got, b);
  EXPECT_EQ(parked.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  // The parked write has not reached either view.
  EXPECT_TRUE(old_view.ReadAt(96 << 10, got).ok());
  EXPECT_EQ(got, Filled(4096, 0));

  ASSERT_TRUE(gate.Swap(std::move(fresh)).ok());
  EXPECT_EQ(parked.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  gate.Open();
  ASSERT_TRUE(parked.get().ok());
  // It went through the view in place when the range opened: the new one.
  EXPECT_TRUE(new_view->ReadAt(96 << 10, got).ok());
  EXPECT_EQ(got, a);
  EXPECT_TRUE(old_view.ReadAt(96 << 10, got).ok());
  EXPECT_EQ(got, Filled(4096, 0));
  EXPECT_FALSE(gate.held());
}

// Hold waits for a request in flight in its range: a view whose ReadAt blocks until released.
class SlowDevice final : public BlockDevice {
 public:
  std::promise<void> entered, proceed;
  Status ReadAt(uint64_t offset, std::span<uint8_t> buf) override {
    entered.set_value();
    proceed.get_future().wait();
    return mem_.ReadAt(offset, buf);
  }
  Status WriteAt(uint64_t offset, std::span<const uint8_t> buf) override { return mem_.WriteAt(offset, buf); }
  Status Sync() override { return Status::Ok(); }
  uint64_t Size() const override { return mem_.Size(); }
  const std::string& name() const override { return mem_.name(); }
  bool writable() const override { return true; }

 private:
  MemDevice mem_{"slow", kSize};
};

TEST(GatedDeviceTest, HoldWaitsForRequestsInFlight) {
  SlowDevice slow;
  GatedDevice gate(&slow);
  std::vector<uint8_t> buf(4096);
  std::future<Status> reading = std::async(std::launch::async, [&] { return gate.ReadAt(8192, buf); });
  slow.entered.get_future().wait();
  std::future<Status> holding = std::async(std::launch::async, [&] { return gate.Hold(0, 65536); });
  EXPECT_EQ(holding.wait_for(std::chrono::seconds(0)), std::future_status::timeout);
  slow.proceed.set_value();
  EXPECT_TRUE(reading.get().ok());
  EXPECT_TRUE(holding.get().ok());
  gate.Open();
}

TEST(GatedDeviceTest, PoisonedRangeFailsInsteadOfWaiting) {
  MemDevice v("v", kSize);
  GatedDevice gate(&v);
  ASSERT_TRUE(gate.Hold(0, 65536).ok());
  gate.Poison("the step failed");
  std::vector<uint8_t> buf(4096);
  Status s = gate.ReadAt(4096, buf);
  EXPECT_EQ(s.code(), Code::kIOError);
  EXPECT_NE(s.message().find("the step failed"), std::string::npos);
  EXPECT_TRUE(gate.ReadAt(65536, buf).ok());
  EXPECT_EQ(gate.Swap(std::make_unique<MemDevice>("small", kSize / 2)).code(), Code::kInvalidArgument);
}

}  // namespace
}  // namespace ds::fuse
