#include "io/mem_device.h"

#include <cstring>
#include <random>

namespace ds {

namespace {
Status CheckRange(const std::string& name, uint64_t size, uint64_t off, size_t len) {
  if (off > size || len > size - off)
    return IOError(name + ": access of " + std::to_string(len) + " bytes at " +
                   std::to_string(off) + " is beyond the end");
  return Status::Ok();
}
bool Overlaps(const std::optional<std::pair<uint64_t, uint64_t>>& r, uint64_t off, size_t len) {
  return r && off < r->second && off + len > r->first;
}
}  // namespace

Status MemDevice::ReadAt(uint64_t offset, std::span<uint8_t> buf) {
  std::lock_guard l(mu_);
  DS_RETURN_IF_ERROR(CheckRange(name_, data_.size(), offset, buf.size()));
  if (!buf.empty()) std::memcpy(buf.data(), data_.data() + offset, buf.size());
  return Status::Ok();
}

Status MemDevice::WriteAt(uint64_t offset, std::span<const uint8_t> buf) {
  std::lock_guard l(mu_);
  DS_RETURN_IF_ERROR(CheckRange(name_, data_.size(), offset, buf.size()));
  if (!buf.empty()) std::memcpy(data_.data() + offset, buf.data(), buf.size());
  return Status::Ok();
}

std::vector<uint8_t> MemDevice::Snapshot() const {
  std::lock_guard l(mu_);
  return data_;
}

FaultDevice::FaultDevice(std::string name, std::vector<uint8_t> initial,
                         std::shared_ptr<FaultClock> clock)
    : name_(std::move(name)), durable_(initial), current_(std::move(initial)), clock_(std::move(clock)) {}

bool FaultDevice::TickLocked() {
  std::lock_guard l(clock_->mu);
  if (clock_->crashed) return true;
  ++clock_->ops;
  if (clock_->crash_at && clock_->ops >= *clock_->crash_at) clock_->crashed = true;
  return clock_->crashed;
}

Status FaultDevice::ReadAt(uint64_t offset, std::span<uint8_t> buf) {
  std::lock_guard l(mu_);
  if (crashed()) return IOError(name_ + ": injected crash");
  DS_RETURN_IF_ERROR(CheckRange(name_, current_.size(), offset, buf.size()));
  if (Overlaps(bad_read_, offset, buf.size()))
    return PosixError(name_ + ": read at " + std::to_string(offset), EIO);
  if (!buf.empty()) std::memcpy(buf.data(), current_.data() + offset, buf.size());
  return Status::Ok();
}

Status FaultDevice::WriteAt(uint64_t offset, std::span<const uint8_t> buf) {
  std::lock_guard l(mu_);
  if (TickLocked()) return IOError(name_ + ": injected crash");
  DS_RETURN_IF_ERROR(CheckRange(name_, current_.size(), offset, buf.size()));
  if (Overlaps(bad_write_, offset, buf.size()))
    return PosixError(name_ + ": write at " + std::to_string(offset), EIO);
  if (!buf.empty()) std::memcpy(current_.data() + offset, buf.data(), buf.size());
  pending_.push_back({offset, std::vector<uint8_t>(buf.begin(), buf.end())});
  return Status::Ok();
}

Status FaultDevice::Sync() {
  std::lock_guard l(mu_);
  if (TickLocked()) return IOError(name_ + ": injected crash");
  for (const auto& p : pending_)
    std::memcpy(durable_.data() + p.offset, p.data.data(), p.data.size());
  pending_.clear();
  return Status::Ok();
}

void FaultDevice::CrashAfterOps(uint64_t n) {
  std::lock_guard l(clock_->mu);
  clock_->crash_at = clock_->ops + n;
}

bool FaultDevice::crashed() const {
  std::lock_guard l(clock_->mu);
  return clock_->crashed;
}

std::vector<uint8_t> FaultDevice::PowerCut(CutMode mode, uint64_t seed) {
  std::lock_guard l(mu_);
  std::mt19937_64 rng(seed);
  if (mode != CutMode::kDropUnsynced && !pending_.empty()) {
    std::optional<size_t> torn;
    if (mode == CutMode::kTearOne) torn = rng() % pending_.size();
    for (size_t i = 0; i < pending_.size(); ++i) {
      const auto& p = pending_[i];
      bool keep = (rng() & 1) != 0 || (torn && *torn == i);
      if (!keep) continue;
      size_t len = p.data.size();
      if (torn && *torn == i) {
        size_t sectors = len / 512;
        len = sectors ? (rng() % sectors) * 512 : 0;  // a prefix, cut at a sector boundary
      }
      std::memcpy(durable_.data() + p.offset, p.data.data(), len);
    }
  }
  pending_.clear();
  current_ = durable_;
  std::lock_guard c(clock_->mu);
  clock_->crashed = false;
  clock_->crash_at.reset();
  return durable_;
}

void FaultDevice::FailReadAt(uint64_t begin, uint64_t end) {
  std::lock_guard l(mu_);
  bad_read_ = {begin, end};
}
void FaultDevice::FailWriteAt(uint64_t begin, uint64_t end) {
  std::lock_guard l(mu_);
  bad_write_ = {begin, end};
}
void FaultDevice::ClearFaults() {
  std::lock_guard l(mu_);
  bad_read_.reset();
  bad_write_.reset();
  std::lock_guard c(clock_->mu);
  clock_->crash_at.reset();
  clock_->crashed = false;
}
uint64_t FaultDevice::ops() const {
  std::lock_guard l(clock_->mu);
  return clock_->ops;
}
std::vector<uint8_t> FaultDevice::Current() const {
  std::lock_guard l(mu_);
  return current_;
}

}  // namespace ds
