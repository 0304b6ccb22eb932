#include "volume/segmented_device.h"

#include <algorithm>

namespace ds {

void SegmentedDevice::Append(std::unique_ptr<BlockDevice> part) {
  starts_.push_back(size_);
  size_ += part->Size();
  parts_.push_back(std::move(part));
}

template <class Span, class Fn>
Status SegmentedDevice::ForEach(uint64_t offset, Span buf, Fn fn) {
  if (offset > size_ || buf.size() > size_ - offset)
    return IOError(name_ + ": access at " + std::to_string(offset) + " is beyond the end");
  size_t done = 0;
  while (done < buf.size()) {
    uint64_t pos = offset + done;
    size_t i = size_t(std::upper_bound(starts_.begin(), starts_.end(), pos) - starts_.begin()) - 1;
    uint64_t in_part = pos - starts_[i];
    size_t n = size_t(std::min<uint64_t>(buf.size() - done, parts_[i]->Size() - in_part));
    DS_RETURN_IF_ERROR(fn(*parts_[i], in_part, buf.subspan(done, n)));
    done += n;
  }
  return Status::Ok();
}

Status SegmentedDevice::ReadAt(uint64_t offset, std::span<uint8_t> buf) {
  return ForEach(offset, buf, [](BlockDevice& d, uint64_t o, std::span<uint8_t> b) {
    return d.ReadAt(o, b);
  });
}

Status SegmentedDevice::WriteAt(uint64_t offset, std::span<const uint8_t> buf) {
  return ForEach(offset, buf, [](BlockDevice& d, uint64_t o, std::span<const uint8_t> b) {
    return d.WriteAt(o, b);
  });
}

Status SegmentedDevice::Sync() {
  // Parts usually share one underlying device; syncing each is correct and cheap.
  for (auto& p : parts_) DS_RETURN_IF_ERROR(p->Sync());
  return Status::Ok();
}

bool SegmentedDevice::writable() const {
  return std::all_of(parts_.begin(), parts_.end(), [](const auto& p) { return p->writable(); });
}

}  // namespace ds
