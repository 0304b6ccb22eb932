// The plaintext view of one LUKS2 data segment as a BlockDevice: reads decrypt, writes encrypt.
// Used by export/import, the userspace (FUSE) view and the in-place engine.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "crypto/crypto.h"
#include "io/block_device.h"

namespace ds {

// Plaintext byte i of the segment lives at raw byte `offset + i`; it is encrypted in sectors of
// `sector_size` bytes whose IV is iv_tweak + (i / 512) for the sector's first byte (LUKS2).
// With cipher == nullptr the segment is linear (plaintext on disk).
// Ownership: `raw` is borrowed and must outlive this object. Threading: any number of concurrent
// ReadAt/WriteAt on disjoint sectors (each call takes a cipher context from a small pool).
// Unaligned accesses are served by read-modify-write of the covering sectors.
class CryptDevice final : public BlockDevice {
 public:
  CryptDevice(BlockDevice* raw, uint64_t offset, uint64_t size,
              std::unique_ptr<SectorCipher> cipher, uint32_t sector_size, uint64_t iv_tweak);

  Status ReadAt(uint64_t offset, std::span<uint8_t> buf) override;
  Status WriteAt(uint64_t offset, std::span<const uint8_t> buf) override;
  Status Sync() override { return raw_->Sync(); }
  uint64_t Size() const override { return size_; }
  const std::string& name() const override { return raw_->name(); }
  bool writable() const override { return raw_->writable(); }

 private:
  Result<std::unique_ptr<SectorCipher>> Acquire();
  void Release(std::unique_ptr<SectorCipher> c);
  Status CheckRange(uint64_t offset, size_t len) const;
  // Aligned fast paths: off and buf.size() multiples of sector_size_.
  Status ReadAligned(uint64_t off, std::span<uint8_t> buf);
  Status WriteAligned(uint64_t off, std::span<const uint8_t> buf);

  BlockDevice* raw_;
  uint64_t offset_, size_;
  uint32_t sector_size_;
  uint64_t iv_tweak_;
  bool linear_;
  std::mutex mu_;
  std::vector<std::unique_ptr<SectorCipher>> pool_;
  std::unique_ptr<SectorCipher> proto_;
};

}  // namespace ds
