// Several BlockDevices laid end to end as one: how a LUKS2 volume's plaintext is assembled from
// its segments (one crypt segment normally; linear + crypt, or old + new crypt, while an in-place
// operation is under way).
#pragma once

#include <memory>
#include <vector>

#include "io/block_device.h"

namespace ds {

// Owns its parts. Threading: as the parts (disjoint ranges may be accessed concurrently).
class SegmentedDevice final : public BlockDevice {
 public:
  explicit SegmentedDevice(std::string name) : name_(std::move(name)) {}
  // Appends a part covering the next part->Size() bytes of the whole.
  void Append(std::unique_ptr<BlockDevice> part);

  Status ReadAt(uint64_t offset, std::span<uint8_t> buf) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> buf) override;
  Status Sync() override;
  uint64_t Size() const override { return size_; }
  const std::string& name() const override { return name_; }
  bool writable() const override;

 private:
  template <class Span, class Fn>
  Status ForEach(uint64_t offset, Span buf, Fn fn);

  std::string name_;
  std::vector<std::unique_ptr<BlockDevice>> parts_;
  std::vector<uint64_t> starts_;
  uint64_t size_ = 0;
};

}  // namespace ds
