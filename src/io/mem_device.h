// In-memory BlockDevice and a fault-injecting wrapper for tests of code that must survive crashes
// (after LevelDB's fault_injection_test). Both are thread-safe (one mutex each).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "io/block_device.h"

namespace ds {

// A fixed-size device backed by a byte vector. Sync is a no-op: memory is "durable".
class MemDevice final : public BlockDevice {
 public:
  MemDevice(std::string name, uint64_t size) : name_(std::move(name)), data_(size) {}
  MemDevice(std::string name, std::vector<uint8_t> data)
      : name_(std::move(name)), data_(std::move(data)) {}

  Status ReadAt(uint64_t offset, std::span<uint8_t> buf) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> buf) override;
  Status Sync() override { return Status::Ok(); }
  uint64_t Size() const override { return data_.size(); }
  const std::string& name() const override { return name_; }
  bool writable() const override { return true; }

  std::vector<uint8_t> Snapshot() const;

 private:
  std::string name_;
  mutable std::mutex mu_;
  std::vector<uint8_t> data_;
};

// Forwards every call to a device it does not own (for handing a test's device to code that
// takes ownership). The target must outlive it.
class DeviceRef final : public BlockDevice {
 public:
  explicit DeviceRef(BlockDevice* target) : t_(target) {}
  Status ReadAt(uint64_t o, std::span<uint8_t> b) override { return t_->ReadAt(o, b); }
  Status WriteAt(uint64_t o, std::span<const uint8_t> b) override { return t_->WriteAt(o, b); }
  Status Sync() override { return t_->Sync(); }
  void StartWriteback(uint64_t o, uint64_t n) override { t_->StartWriteback(o, n); }
  void DropCache(uint64_t o, uint64_t n) override { t_->DropCache(o, n); }
  Status ReadAtUncached(uint64_t o, std::span<uint8_t> b) override { return t_->ReadAtUncached(o, b); }
  Status WriteAtUncached(uint64_t o, std::span<const uint8_t> b) override { return t_->WriteAtUncached(o, b); }
  uint64_t Size() const override { return t_->Size(); }
  const std::string& name() const override { return t_->name(); }
  bool writable() const override { return t_->writable(); }

 private:
  BlockDevice* t_;
};

// Wraps the state of a disk with a volatile write cache in front of it. Reads see every write;
// only writes followed by a successful Sync are durable. Tests then:
//  - CrashAfterOps(n): the n-th write or sync from now, and every I/O after it, fail as if the
//    process had died at that instant (kIOError "injected crash");
//  - PowerCut(): what a power cut leaves: durable data plus, depending on the mode, none, some or a
//    torn prefix (at a 512-byte boundary) of the writes since the last Sync;
//  - FailReadAt / FailWriteAt: EIO for any access touching a byte range.
// Several FaultDevices can share one clock so that a crash happens at the same instant on all of
// them (a header file and a data device crash together).
struct FaultClock {
  std::mutex mu;
  uint64_t ops = 0;
  std::optional<uint64_t> crash_at;
  bool crashed = false;
};

class FaultDevice final : public BlockDevice {
 public:
  enum class CutMode {
    kDropUnsynced,  // every unsynced write is lost
    kKeepSome,      // each unsynced write independently kept or lost (seeded)
    kTearOne,       // like kKeepSome, and one kept write is cut at a sector boundary
  };

  FaultDevice(std::string name, std::vector<uint8_t> initial,
              std::shared_ptr<FaultClock> clock = std::make_shared<FaultClock>());

  Status ReadAt(uint64_t offset, std::span<uint8_t> buf) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> buf) override;
  Status Sync() override;
  uint64_t Size() const override { return durable_.size(); }
  const std::string& name() const override { return name_; }
  bool writable() const override { return true; }

  void CrashAfterOps(uint64_t n);
  bool crashed() const;
  // Returns the bytes that survive a power cut now and resets the device to them (clearing the
  // crash trigger), as a machine that boots again would see its disk.
  std::vector<uint8_t> PowerCut(CutMode mode, uint64_t seed);
  void FailReadAt(uint64_t begin, uint64_t end);
  void FailWriteAt(uint64_t begin, uint64_t end);
  void ClearFaults();
  uint64_t ops() const;          // writes + syncs so far, to size crash-point loops
  std::vector<uint8_t> Current() const;

 private:
  struct Pending {
    uint64_t offset;
    std::vector<uint8_t> data;
  };
  bool TickLocked();  // counts an op; true if this op must fail as a crash

  std::string name_;
  mutable std::mutex mu_;
  std::vector<uint8_t> durable_;
  std::vector<uint8_t> current_;
  std::vector<Pending> pending_;
  std::shared_ptr<FaultClock> clock_;
  std::optional<std::pair<uint64_t, uint64_t>> bad_read_, bad_write_;
};

}  // namespace ds
