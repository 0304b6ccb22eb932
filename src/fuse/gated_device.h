// The userspace view's side of an online in-place operation (README "Online without
// device-mapper"): the served BlockDevice becomes a GatedDevice, a range gate in front of a view
// that can be swapped. While the engine holds a hotzone, users' reads and writes that touch it wait
// (and the engine waits for those already in flight); I/O elsewhere goes on. When the engine has
// committed the hotzone done, the view is replaced by one built from the committed header (the
// hotzone now in the new layout) and the waiting I/O goes through it.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

#include "io/block_device.h"
#include "util/status.h"

namespace ds::fuse {

// Threading: ReadAt/WriteAt/Sync from any number of threads (the FUSE workers); Hold/Swap/Open/
// Poison from one controlling thread (the engine's). Ownership: the initial view is borrowed (it
// must outlive this object); swapped-in views are owned, and an old owned view lives on until the
// last request that started on it has ended.
class GatedDevice : public BlockDevice {
 public:
  explicit GatedDevice(BlockDevice* initial);

  Status ReadAt(uint64_t offset, std::span<uint8_t> buf) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> buf) override;
  Status Sync() override;
  uint64_t Size() const override { return size_; }
  const std::string& name() const override { return name_; }
  bool writable() const override { return writable_; }
  uint32_t io_alignment() const override { return alignment_; }

  // Closes [offset, offset + len): requests touching it that start from now on wait; returns once
  // those already in flight there have ended. One range at a time (kInternal for a second).
  Status Hold(uint64_t offset, uint64_t len);
  // Serves later requests from `next` (same size; kInvalidArgument otherwise). Requests in flight
  // finish on the view they started with: outside the held range both views map the same bytes.
  Status Swap(std::unique_ptr<BlockDevice> next);
  // Reopens the held range; waiting requests go through the current view.
  void Open();
  // The held range can no longer be served right (its layout is unknown after a failed step):
  // requests touching it fail with kIOError (EIO to the user) instead of waiting forever.
  void Poison(const std::string& why);
  bool held() const;

 private:
  struct Range {
    uint64_t begin, end;
  };
  // Waits until [b, e) is not held, registers it as in flight and returns the view to use.
  Result<std::shared_ptr<BlockDevice>> Enter(uint64_t b, uint64_t e, std::list<Range>::iterator* it);
  void Leave(std::list<Range>::iterator it);

  const uint64_t size_;
  const std::string name_;
  const bool writable_;
  const uint32_t alignment_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<BlockDevice> view_;  // guarded by mu_
  std::list<Range> in_flight_;         // guarded by mu_
  std::optional<Range> held_;          // guarded by mu_
  std::optional<Range> poisoned_;      // guarded by mu_
  std::string poison_why_;             // guarded by mu_
};

}  // namespace ds::fuse
