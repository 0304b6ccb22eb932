#include "volume/crypt_device.h"

#include <cstring>

namespace ds {

CryptDevice::CryptDevice(BlockDevice* raw, uint64_t offset, uint64_t size,
                         std::unique_ptr<SectorCipher> cipher, uint32_t sector_size,
                         uint64_t iv_tweak)
    : raw_(raw), offset_(offset), size_(size), sector_size_(sector_size), iv_tweak_(iv_tweak),
      linear_(cipher == nullptr), proto_(std::move(cipher)) {
  if (linear_) sector_size_ = 512;
}

Result<std::unique_ptr<SectorCipher>> CryptDevice::Acquire() {
  {
    std::lock_guard l(mu_);
    if (!pool_.empty()) {
      auto c = std::move(pool_.back());
      pool_.pop_back();
      return c;
    }
  }
  return proto_->Clone();
}

void CryptDevice::Release(std::unique_ptr<SectorCipher> c) {
  std::lock_guard l(mu_);
  pool_.push_back(std::move(c));
}

Status CryptDevice::CheckRange(uint64_t offset, size_t len) const {
  if (offset > size_ || len > size_ - offset)
    return IOError(raw_->name() + ": access at " + std::to_string(offset) +
                   " is beyond the end of the data segment (" + std::to_string(size_) + " bytes)");
  return Status::Ok();
}

Status CryptDevice::ReadAligned(uint64_t off, std::span<uint8_t> buf) {
  DS_RETURN_IF_ERROR(raw_->ReadAt(offset_ + off, buf));
  if (linear_) return Status::Ok();
  DS_ASSIGN_OR_RETURN(auto c, Acquire());
  Status s = c->Decrypt(buf, iv_tweak_ + off / 512, sector_size_);
  Release(std::move(c));
  return s;
}

Status CryptDevice::WriteAligned(uint64_t off, std::span<const uint8_t> buf) {
  if (linear_) return raw_->WriteAt(offset_ + off, buf);
  DS_ASSIGN_OR_RETURN(auto c, Acquire());
  // Encrypt through a bounded scratch buffer so large writes do not double memory.
  constexpr size_t kChunk = 1 << 20;
  std::vector<uint8_t> tmp(std::min(buf.size(), kChunk));
  Status s;
  for (size_t done = 0; done < buf.size() && s.ok(); done += tmp.size()) {
    size_t n = std::min(kChunk, buf.size() - done);
    tmp.resize(n);
    std::memcpy(tmp.data(), buf.data() + done, n);
    s = c->Encrypt(tmp, iv_tweak_ + (off + done) / 512, sector_size_);
    if (s.ok()) s = raw_->WriteAt(offset_ + off + done, tmp);
  }
  Release(std::move(c));
  return s;
}

Status CryptDevice::ReadAt(uint64_t offset, std::span<uint8_t> buf) {
  DS_RETURN_IF_ERROR(CheckRange(offset, buf.size()));
  if (buf.empty()) return Status::Ok();
  const uint64_t ss = sector_size_;
  if (offset % ss == 0 && buf.size() % ss == 0) return ReadAligned(offset, buf);
  uint64_t begin = offset / ss * ss;
  uint64_t end = (offset + buf.size() + ss - 1) / ss * ss;
  std::vector<uint8_t> tmp(end - begin);
  DS_RETURN_IF_ERROR(ReadAligned(begin, tmp));
  std::memcpy(buf.data(), tmp.data() + (offset - begin), buf.size());
  return Status::Ok();
}

Status CryptDevice::WriteAt(uint64_t offset, std::span<const uint8_t> buf) {
  DS_RETURN_IF_ERROR(CheckRange(offset, buf.size()));
  if (buf.empty()) return Status::Ok();
  const uint64_t ss = sector_size_;
  if (offset % ss == 0 && buf.size() % ss == 0) return WriteAligned(offset, buf);
  // Read-modify-write of the covering sectors. Callers that write the same sector concurrently
  // must serialise themselves (a filesystem never does; the FUSE view locks per request).
  uint64_t begin = offset / ss * ss;
  uint64_t end = (offset + buf.size() + ss - 1) / ss * ss;
  std::vector<uint8_t> tmp(end - begin);
  DS_RETURN_IF_ERROR(ReadAligned(begin, tmp));
  std::memcpy(tmp.data() + (offset - begin), buf.data(), buf.size());
  return WriteAligned(begin, tmp);
}

}  // namespace ds
