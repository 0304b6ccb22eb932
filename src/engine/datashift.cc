#include "engine/datashift.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "crypto/crypto.h"
#include "luks2/header_io.h"

namespace ds::engine {

namespace {

// The staging record: one 4 KiB block, big-endian, followed by the header image's first
// `image_len` bytes (the rest of the image is zeros).
//   0  magic[16] "diskseal-dshift1"
//   16 be64 device size   24 be64 shift   32 be64 image_len
//   40 sha256 of the moved copy (the device's [D-S, D))   72 sha256 of the whole image
//   104 sha256 of bytes [0, 104) of this record
constexpr char kMagic[16] = {'d', 'i', 's', 'k', 's', 'e', 'a', 'l', '-', 'd', 's', 'h', 'i', 'f', 't', '1'};
constexpr size_t kRecord = 4096;

Result<Bytes> Sha256(std::span<const uint8_t> data) { return Hash("sha256", data); }

uint64_t StagingAt(uint64_t dev_size, uint64_t shift) { return dev_size - 2 * shift; }
uint64_t MovedAt(uint64_t dev_size, uint64_t shift) { return dev_size - shift; }

Status CheckGeometry(const BlockDevice& dev, uint64_t shift) {
  if (shift == 0 || shift % 4096 || dev.Size() < 3 * shift)
    return InvalidArgument(dev.name() + ": a data shift of " + std::to_string(shift) +
                           " bytes does not fit a device of " + std::to_string(dev.Size()) + " bytes");
  return Status::Ok();
}

// Steps 2 and 3: keyslot area first, then the header copies, each made durable.
Status WriteFront(BlockDevice& dev, std::span<const uint8_t> image) {
  if (image.size() < 4096) return Corrupt(dev.name() + ": the header image is too small");
  const uint64_t hdr = GetBe64(image.data() + 8);
  if (hdr < 16384 || 2 * hdr > image.size()) return Corrupt(dev.name() + ": the header image is malformed");
  DS_RETURN_IF_ERROR(dev.WriteAt(2 * hdr, image.subspan(2 * hdr)));
  DS_RETURN_IF_ERROR(dev.Sync());
  DS_RETURN_IF_ERROR(dev.WriteAt(0, image.first(2 * hdr)));
  return dev.Sync();
}

}  // namespace

Status PlaceShiftHeader(BlockDevice& dev, std::span<const uint8_t> image, uint64_t shift) {
  DS_RETURN_IF_ERROR(CheckGeometry(dev, shift));
  if (image.size() != shift) return InvalidArgument(dev.name() + ": the header image must be shift bytes");
  const uint64_t size = dev.Size();
  uint64_t used = image.size();
  while (used > 0 && image[used - 1] == 0) --used;
  used = (used + 4095) / 4096 * 4096;
  if (used + kRecord > shift) return InvalidArgument(dev.name() + ": the header image leaves no room for staging");
  // 1. moved copy + staging record + image, durable before the front is touched.
  {
    Bytes front(shift);
    DS_RETURN_IF_ERROR(dev.ReadAt(0, front));
    DS_ASSIGN_OR_RETURN(Bytes moved_sum, Sha256(front));
    DS_RETURN_IF_ERROR(dev.WriteAt(MovedAt(size, shift), front));
    DS_ASSIGN_OR_RETURN(Bytes image_sum, Sha256(image));
    std::array<uint8_t, kRecord> rec{};
    std::memcpy(rec.data(), kMagic, sizeof kMagic);
    PutBe64(rec.data() + 16, size);
    PutBe64(rec.data() + 24, shift);
    PutBe64(rec.data() + 32, used);
    if (moved_sum.size() != 32 || image_sum.size() != 32) return Corrupt("sha256 is not 32 bytes");
    std::copy(moved_sum.begin(), moved_sum.end(), rec.begin() + 40);
    std::copy(image_sum.begin(), image_sum.end(), rec.begin() + 72);
    DS_ASSIGN_OR_RETURN(Bytes self, Sha256(std::span<const uint8_t>(rec).first(104)));
    std::copy(self.begin(), self.end(), rec.begin() + 104);
    DS_RETURN_IF_ERROR(dev.WriteAt(StagingAt(size, shift), rec));
    DS_RETURN_IF_ERROR(dev.WriteAt(StagingAt(size, shift) + kRecord, image.first(used)));
    DS_RETURN_IF_ERROR(dev.Sync());
  }
  return WriteFront(dev, image);
}

Result<ShiftStart> RecoverShiftHeader(BlockDevice& dev, uint64_t shift) {
  if (luks2::ReadHeader(dev).ok()) return ShiftStart::kHeader;
  if (shift == 0 || shift % 4096 || dev.Size() < 3 * shift) return ShiftStart::kNothing;
  const uint64_t size = dev.Size();
  Bytes rec(kRecord);
  DS_RETURN_IF_ERROR(dev.ReadAt(StagingAt(size, shift), rec));
  if (std::memcmp(rec.data(), kMagic, sizeof kMagic) != 0) return ShiftStart::kNothing;
  DS_ASSIGN_OR_RETURN(Bytes self, Sha256(std::span<const uint8_t>(rec).first(104)));
  if (std::memcmp(self.data(), rec.data() + 104, 32) != 0) return ShiftStart::kNothing;  // torn record
  const uint64_t used = GetBe64(rec.data() + 32);
  if (GetBe64(rec.data() + 16) != size || GetBe64(rec.data() + 24) != shift || used + kRecord > shift)
    return ShiftStart::kNothing;  // a record for another geometry: not ours to act on
  Bytes moved(shift);
  DS_RETURN_IF_ERROR(dev.ReadAt(MovedAt(size, shift), moved));
  DS_ASSIGN_OR_RETURN(Bytes moved_sum, Sha256(moved));
  Bytes image(shift, 0);
  DS_RETURN_IF_ERROR(dev.ReadAt(StagingAt(size, shift) + kRecord, std::span<uint8_t>(image).first(used)));
  DS_ASSIGN_OR_RETURN(Bytes image_sum, Sha256(image));
  // Step 1 was not wholly durable: then the front was never written and is the original.
  if (std::memcmp(moved_sum.data(), rec.data() + 40, 32) != 0 ||
      std::memcmp(image_sum.data(), rec.data() + 72, 32) != 0)
    return ShiftStart::kNothing;
  DS_RETURN_IF_ERROR(WriteFront(dev, image));
  return ShiftStart::kRestored;
}

Status CopyMovedSegmentToFront(BlockDevice& dev, uint64_t shift) {
  if (shift == 0 || dev.Size() < 2 * shift)
    return InvalidArgument(dev.name() + ": the data shift does not fit the device");
  Bytes buf(size_t(std::min<uint64_t>(shift, 1u << 20)));
  for (uint64_t at = 0; at < shift; at += buf.size()) {
    std::span<uint8_t> piece(buf.data(), size_t(std::min<uint64_t>(buf.size(), shift - at)));
    DS_RETURN_IF_ERROR(dev.ReadAt(shift + at, piece));
    DS_RETURN_IF_ERROR(dev.WriteAt(at, piece));
  }
  return dev.Sync();
}

Result<std::optional<FilesystemExtent>> ProbeFilesystem(BlockDevice& dev) {
  auto le16 = [](const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8; };
  auto le32 = [](const uint8_t* p) {
    return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
  };
  auto le64 = [&](const uint8_t* p) { return uint64_t(le32(p)) | uint64_t(le32(p + 4)) << 32; };
  auto be32 = [](const uint8_t* p) {
    return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
  };
  // xfs: superblock at 0, "XFSB", sb_blocksize (be32 @4), sb_dblocks (be64 @8).
  if (dev.Size() >= 512) {
    uint8_t b[512];
    DS_RETURN_IF_ERROR(dev.ReadAt(0, b));
    if (std::memcmp(b, "XFSB", 4) == 0)
      return std::optional<FilesystemExtent>(FilesystemExtent{"xfs", GetBe64(b + 8) * be32(b + 4)});
  }
  // ext2/3/4: superblock at 1024, magic 0xEF53 (le16 @56), blocks (le32 @4, high half @0x150 with
  // INCOMPAT_64BIT), block size 1024 << s_log_block_size (le32 @24).
  if (dev.Size() >= 2048) {
    uint8_t b[1024];
    DS_RETURN_IF_ERROR(dev.ReadAt(1024, b));
    if (le16(b + 56) == 0xEF53) {
      const uint32_t compat = le32(b + 0x5c), incompat = le32(b + 0x60);
      uint64_t blocks = le32(b + 4);
      if (incompat & 0x80) blocks |= uint64_t(le32(b + 0x150)) << 32;
      const uint32_t log = le32(b + 24);
      if (log > 6) return Corrupt(dev.name() + ": ext superblock with an impossible block size");
      const char* type = (incompat & (0x40 | 0x80 | 0x200)) ? "ext4" : (compat & 0x4) ? "ext3" : "ext2";
      return std::optional<FilesystemExtent>(FilesystemExtent{type, blocks * (1024ull << log)});
    }
  }
  // btrfs: superblock at 64 KiB, "_BHRfS_M" @0x40, total_bytes (le64 @0x70).
  if (dev.Size() >= 65536 + 4096) {
    uint8_t b[4096];
    DS_RETURN_IF_ERROR(dev.ReadAt(65536, b));
    if (std::memcmp(b + 0x40, "_BHRfS_M", 8) == 0)
      return std::optional<FilesystemExtent>(FilesystemExtent{"btrfs", le64(b + 0x70)});
  }
  return std::optional<FilesystemExtent>();
}

}  // namespace ds::engine
