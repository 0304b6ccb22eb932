#include "fuse/gated_device.h"

namespace ds::fuse {

namespace {
bool Overlaps(uint64_t b1, uint64_t e1, uint64_t b2, uint64_t e2) { return b1 < e2 && b2 < e1; }
}  // namespace

GatedDevice::GatedDevice(BlockDevice* initial)
    : size_(initial->Size()),
      name_(initial->name()),
      writable_(initial->writable()),
      alignment_(initial->io_alignment()),
      view_(initial, [](BlockDevice*) {}) {}

Result<std::shared_ptr<BlockDevice>> GatedDevice::Enter(uint64_t b, uint64_t e,
                                                        std::list<Range>::iterator* it) {
  std::unique_lock l(mu_);
  for (;;) {
    if (poisoned_ && Overlaps(b, e, poisoned_->begin, poisoned_->end))
      return IOError(name_ + ": bytes " + std::to_string(b) + "+" + std::to_string(e - b) +
                     " cannot be served: " + poison_why_);
    if (!held_ || !Overlaps(b, e, held_->begin, held_->end)) break;
    cv_.wait(l);
  }
  *it = in_flight_.insert(in_flight_.end(), Range{b, e});
  return view_;
}

void GatedDevice::Leave(std::list<Range>::iterator it) {
  std::lock_guard l(mu_);
  bool mattered = held_ && Overlaps(it->begin, it->end, held_->begin, held_->end);
  in_flight_.erase(it);
  if (mattered) cv_.notify_all();
}

Status GatedDevice::ReadAt(uint64_t offset, std::span<uint8_t> buf) {
  std::list<Range>::iterator it;
  DS_ASSIGN_OR_RETURN(auto view, Enter(offset, offset + buf.size(), &it));
  Status s = view->ReadAt(offset, buf);
  Leave(it);
  return s;
}

Status GatedDevice::WriteAt(uint64_t offset, std::span<const uint8_t> buf) {
  std::list<Range>::iterator it;
  DS_ASSIGN_OR_RETURN(auto view, Enter(offset, offset + buf.size(), &it));
  Status s = view->WriteAt(offset, buf);
  Leave(it);
  return s;
}

Status GatedDevice::Sync() {
  std::shared_ptr<BlockDevice> view;
  {
    std::lock_guard l(mu_);
    view = view_;
  }
  // Every view writes through the same data device: syncing the current one syncs them all.
  return view->Sync();
}

Status GatedDevice::Hold(uint64_t offset, uint64_t len) {
  std::unique_lock l(mu_);
  if (held_) return Internal(name_ + ": a hotzone is already held");
  held_ = Range{offset, offset + len};
  cv_.wait(l, [&] {
    for (const auto& r : in_flight_)
      if (Overlaps(r.begin, r.end, held_->begin, held_->end)) return false;
    return true;
  });
  return Status::Ok();
}

Status GatedDevice::Swap(std::unique_ptr<BlockDevice> next) {
  if (next->Size() != size_)
    return InvalidArgument(name_ + ": the new view has " + std::to_string(next->Size()) +
                           " bytes, the served file " + std::to_string(size_));
  std::lock_guard l(mu_);
  view_ = std::shared_ptr<BlockDevice>(std::move(next));
  return Status::Ok();
}

void GatedDevice::Open() {
  std::lock_guard l(mu_);
  held_.reset();
  cv_.notify_all();
}

void GatedDevice::Poison(const std::string& why) {
  std::lock_guard l(mu_);
  if (held_) poisoned_ = held_;
  poison_why_ = why;
  held_.reset();
  cv_.notify_all();
}

bool GatedDevice::held() const {
  std::lock_guard l(mu_);
  return held_.has_value();
}

}  // namespace ds::fuse
