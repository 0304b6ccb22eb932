#include "engine/datashift.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <thread>

#include "crypto/crypto.h"
#include "io/io_buffer.h"
#include "luks2/header_io.h"

namespace ds::engine {

namespace {

// The staging record: one 4 KiB block, big-endian, followed by the header image's first
// `image_len` bytes (the rest of the image is zeros).
//   0  magic[16] "diskseal-dshift2"
//   16 be64 device size   24 be64 shift   32 be64 image_len
//   40 sha256 of the moved copy (the device's [D-S, D))   72 sha256 of the image's first image_len
//   bytes   104 sha256 of bytes [0, 104) of this record
// Version 1 ("diskseal-dshift1", written before 2026-12) hashed the whole image, zeros included;
// such a record is still recovered.
constexpr char kMagic[16] = {'d', 'i', 's', 'k', 's', 'e', 'a', 'l', '-', 'd', 's', 'h', 'i', 'f', 't', '2'};
constexpr char kMagicV1[16] = {'d', 'i', 's', 'k', 's', 'e', 'a', 'l', '-', 'd', 's', 'h', 'i', 'f', 't', '1'};
constexpr size_t kRecord = 4096;

// The image's length without its trailing zeros, rounded up to 4 KiB. Word-wise from the end: the
// image is mostly zeros (the keyslots area), so this reads nearly all of it.
uint64_t UsedLength(std::span<const uint8_t> image) {
  uint64_t end = image.size() / 4096 * 4096;
  if (end != image.size()) return (image.size() + 4095) / 4096 * 4096;
  for (; end > 0; end -= 4096) {
    uint64_t acc = 0;
    for (size_t i = 0; i < 4096; i += 8) {
      uint64_t w;
      std::memcpy(&w, image.data() + end - 4096 + i, 8);
      acc |= w;
    }
    if (acc) break;
  }
  return end;
}

Result<Bytes> Sha256(std::span<const uint8_t> data) { return Hash("sha256", data); }

uint64_t StagingAt(uint64_t dev_size, uint64_t shift) { return dev_size - 2 * shift; }
uint64_t MovedAt(uint64_t dev_size, uint64_t shift) { return dev_size - shift; }

Status CheckGeometry(const BlockDevice& dev, uint64_t shift) {
  if (shift == 0 || shift % 4096 || dev.Size() < 3 * shift)
    return InvalidArgument(dev.name() + ": a data shift of " + std::to_string(shift) +
                           " bytes does not fit a device of " + std::to_string(dev.Size()) + " bytes");
  return Status::Ok();
}

// Everything here streams through buffers of this size: no buffer of the whole shift exists
// (fresh memory costs a page fault per 4 KiB, which measured more than the copies themselves).
constexpr uint64_t kPiece = 1u << 20;

std::span<const uint8_t> Zeros() {
  static const IoBuffer* zeros = [] {
    auto* z = new IoBuffer(kPiece);  // never freed: shared by every caller for the process's life
    std::fill_n(z->data(), kPiece, uint8_t{0});
    return z;
  }();
  return *zeros;
}

// Writes bytes [from, to) of the image at the same device offsets: `prefix`, then zeros.
Status WriteImageRange(BlockDevice& dev, std::span<const uint8_t> prefix, uint64_t from, uint64_t to) {
  for (uint64_t at = from; at < to;) {
    if (at < prefix.size()) {
      const uint64_t n = std::min<uint64_t>(to, prefix.size()) - at;
      DS_RETURN_IF_ERROR(dev.WriteAt(at, prefix.subspan(size_t(at), size_t(n))));
      at += n;
    } else {
      const uint64_t n = std::min<uint64_t>(kPiece, to - at);
      DS_RETURN_IF_ERROR(dev.WriteAt(at, Zeros().first(size_t(n))));
      at += n;
    }
  }
  return Status::Ok();
}

// Steps 2 and 3: keyslot area first, then the header copies, each made durable. `prefix`: the
// image's first bytes; the rest up to `shift` is zeros.
Status WriteFront(BlockDevice& dev, std::span<const uint8_t> prefix, uint64_t shift) {
  if (prefix.size() < 4096) return Corrupt(dev.name() + ": the header image is too small");
  const uint64_t hdr = GetBe64(prefix.data() + 8);
  if (hdr < 16384 || 2 * hdr > shift) return Corrupt(dev.name() + ": the header image is malformed");
  DS_RETURN_IF_ERROR(WriteImageRange(dev, prefix, 2 * hdr, shift));
  DS_RETURN_IF_ERROR(dev.Sync());
  DS_RETURN_IF_ERROR(WriteImageRange(dev, prefix, 0, 2 * hdr));
  return dev.Sync();
}

// Copies device bytes [from, from+len) to [to, to+len) (disjoint) piece by piece, returning
// the sha256 of what was copied. Hashing a piece overlaps the reading and writing of the next.
Result<Bytes> CopyAndHash(BlockDevice& dev, uint64_t from, uint64_t to, uint64_t len) {
  DS_ASSIGN_OR_RETURN(Hasher h, Hasher::Create("sha256"));
  IoBuffer buf[2] = {IoBuffer(size_t(std::min(kPiece, len))), IoBuffer(size_t(std::min(kPiece, len)))};
  std::thread hashing;
  Status hashed = Status::Ok();
  auto join = [&] {
    if (hashing.joinable()) hashing.join();
  };
  Status s = Status::Ok();
  for (uint64_t at = 0, i = 0; at < len && s.ok(); at += kPiece, ++i) {
    std::span<uint8_t> piece(buf[i % 2].data(), size_t(std::min(kPiece, len - at)));
    s = dev.ReadAt(from + at, piece);
    if (s.ok()) s = dev.WriteAt(to + at, piece);
    join();  // the other buffer is free again
    if (s.ok() && hashed.ok())
      hashing = std::thread([&h, &hashed, piece] { hashed = h.Update(piece); });
  }
  join();
  DS_RETURN_IF_ERROR(s);
  DS_RETURN_IF_ERROR(hashed);
  return h.Final();
}

Result<Bytes> HashDeviceRange(BlockDevice& dev, uint64_t off, uint64_t len) {
  DS_ASSIGN_OR_RETURN(Hasher h, Hasher::Create("sha256"));
  IoBuffer buf(size_t(std::min(kPiece, len)));
  for (uint64_t at = 0; at < len; at += kPiece) {
    std::span<uint8_t> piece(buf.data(), size_t(std::min(kPiece, len - at)));
    DS_RETURN_IF_ERROR(dev.ReadAt(off + at, piece));
    DS_RETURN_IF_ERROR(h.Update(piece));
  }
  return h.Final();
}

}  // namespace

Status PlaceShiftHeader(BlockDevice& dev, std::span<const uint8_t> image, uint64_t shift) {
  DS_RETURN_IF_ERROR(CheckGeometry(dev, shift));
  if (image.size() > shift) return InvalidArgument(dev.name() + ": the header image is larger than the shift");
  const uint64_t size = dev.Size();
  const uint64_t used = UsedLength(image);
  image = image.first(size_t(used));
  if (used + kRecord > shift) return InvalidArgument(dev.name() + ": the header image leaves no room for staging");
  // 1. moved copy + staging record + image, durable before the front is touched.
  {
    DS_ASSIGN_OR_RETURN(Bytes moved_sum, CopyAndHash(dev, 0, MovedAt(size, shift), shift));
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
    DS_RETURN_IF_ERROR(dev.WriteAt(StagingAt(size, shift) + kRecord, image));
    DS_RETURN_IF_ERROR(dev.Sync());
  }
  return WriteFront(dev, image, shift);
}

Result<ShiftStart> RecoverShiftHeader(BlockDevice& dev, uint64_t shift) {
  if (luks2::ReadHeader(dev).ok()) return ShiftStart::kHeader;
  if (shift == 0 || shift % 4096 || dev.Size() < 3 * shift) return ShiftStart::kNothing;
  const uint64_t size = dev.Size();
  Bytes rec(kRecord);
  DS_RETURN_IF_ERROR(dev.ReadAt(StagingAt(size, shift), rec));
  const bool v1 = std::memcmp(rec.data(), kMagicV1, sizeof kMagicV1) == 0;
  if (!v1 && std::memcmp(rec.data(), kMagic, sizeof kMagic) != 0) return ShiftStart::kNothing;
  DS_ASSIGN_OR_RETURN(Bytes self, Sha256(std::span<const uint8_t>(rec).first(104)));
  if (std::memcmp(self.data(), rec.data() + 104, 32) != 0) return ShiftStart::kNothing;  // torn record
  const uint64_t used = GetBe64(rec.data() + 32);
  if (GetBe64(rec.data() + 16) != size || GetBe64(rec.data() + 24) != shift || used + kRecord > shift)
    return ShiftStart::kNothing;  // a record for another geometry: not ours to act on
  DS_ASSIGN_OR_RETURN(Bytes moved_sum, HashDeviceRange(dev, MovedAt(size, shift), shift));
  Bytes image(static_cast<size_t>(used));
  DS_RETURN_IF_ERROR(dev.ReadAt(StagingAt(size, shift) + kRecord, image));
  DS_ASSIGN_OR_RETURN(Hasher ih, Hasher::Create("sha256"));
  DS_RETURN_IF_ERROR(ih.Update(image));
  for (uint64_t at = used; v1 && at < shift; at += kPiece)  // version 1 hashed the zeros too
    DS_RETURN_IF_ERROR(ih.Update(Zeros().first(size_t(std::min(kPiece, shift - at)))));
  DS_ASSIGN_OR_RETURN(Bytes image_sum, ih.Final());
  // Step 1 was not wholly durable: then the front was never written and is the original.
  if (std::memcmp(moved_sum.data(), rec.data() + 40, 32) != 0 ||
      std::memcmp(image_sum.data(), rec.data() + 72, 32) != 0)
    return ShiftStart::kNothing;
  DS_RETURN_IF_ERROR(WriteFront(dev, image, shift));
  return ShiftStart::kRestored;
}

Status CopyRange(BlockDevice& from, uint64_t from_off, BlockDevice& to, uint64_t to_off, uint64_t len) {
  IoBuffer buf(size_t(std::min(kPiece, len)));
  for (uint64_t at = 0; at < len; at += kPiece) {
    std::span<uint8_t> piece(buf.data(), size_t(std::min(kPiece, len - at)));
    DS_RETURN_IF_ERROR(from.ReadAt(from_off + at, piece));
    DS_RETURN_IF_ERROR(to.WriteAt(to_off + at, piece));
  }
  return Status::Ok();
}

Status CopyMovedSegmentToFront(BlockDevice& dev, uint64_t shift) {
  if (shift == 0 || dev.Size() < 2 * shift)
    return InvalidArgument(dev.name() + ": the data shift does not fit the device");
  DS_RETURN_IF_ERROR(CopyRange(dev, shift, dev, 0, shift));
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
