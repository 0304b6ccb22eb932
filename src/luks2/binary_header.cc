#include "luks2/binary_header.h"

#include <algorithm>
#include <cstring>

#include "crypto/crypto.h"
#include "luks2/format.h"

namespace ds::luks2 {

namespace {
void PutString(uint8_t* dst, size_t len, const std::string& s) {
  std::memcpy(dst, s.data(), std::min(s.size(), len - 1));  // always leaves a NUL
}

Result<std::string> GetString(const uint8_t* src, size_t len, const char* field) {
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(src, 0, len));
  if (!nul) return Corrupt(std::string(field) + " is not NUL-terminated");
  for (const uint8_t* p = nul; p < src + len; ++p)
    if (*p) return Corrupt(std::string(field) + " has bytes after its terminating NUL");
  return std::string(reinterpret_cast<const char*>(src), size_t(nul - src));
}
}  // namespace

Bytes EncodeBinaryHeader(const BinaryHeader& h) {
  Bytes b(kBinaryHeaderSize, 0);
  std::memcpy(b.data() + kOffMagic, h.secondary ? kMagicSecondary : kMagicPrimary, kLenMagic);
  PutBe16(b.data() + kOffVersion, h.version);
  PutBe64(b.data() + kOffHdrSize, h.hdr_size);
  PutBe64(b.data() + kOffSeqid, h.seqid);
  PutString(b.data() + kOffLabel, kLenLabel, h.label);
  PutString(b.data() + kOffCsumAlg, kLenCsumAlg, h.csum_alg);
  std::memcpy(b.data() + kOffSalt, h.salt.data(), kLenSalt);
  PutString(b.data() + kOffUuid, kLenUuid, h.uuid);
  PutString(b.data() + kOffSubsystem, kLenSubsystem, h.subsystem);
  PutBe64(b.data() + kOffHdrOffset, h.hdr_offset);
  std::memcpy(b.data() + kOffCsum, h.csum.data(), kLenCsum);
  return b;
}

Result<BinaryHeader> DecodeBinaryHeader(std::span<const uint8_t> raw, bool expect_secondary,
                                        uint64_t read_offset) {
  if (raw.size() != kBinaryHeaderSize) return Corrupt("binary header is not 4096 bytes");
  const uint8_t* p = raw.data();
  BinaryHeader h;
  h.secondary = expect_secondary;
  if (std::memcmp(p, expect_secondary ? kMagicSecondary : kMagicPrimary, kLenMagic) != 0)
    return Corrupt(std::string("no LUKS2 ") + (expect_secondary ? "secondary" : "primary") +
                   " magic");
  h.version = GetBe16(p + kOffVersion);
  if (h.version != kVersion)
    return Corrupt("header version is " + std::to_string(h.version) + ", not 2");
  h.hdr_size = GetBe64(p + kOffHdrSize);
  if (!IsValidMetadataSize(h.hdr_size))
    return Corrupt("hdr_size " + std::to_string(h.hdr_size) +
                   " is not one of the allowed metadata sizes (16 KiB .. 4 MiB, powers of 2)");
  h.hdr_offset = GetBe64(p + kOffHdrOffset);
  if (h.hdr_offset != read_offset)
    return Corrupt("hdr_offset " + std::to_string(h.hdr_offset) + " differs from where the copy is (" +
                   std::to_string(read_offset) + ")");
  if (expect_secondary && read_offset != h.hdr_size)
    return Corrupt("secondary copy at " + std::to_string(read_offset) +
                   " but its hdr_size says it belongs at " + std::to_string(h.hdr_size));
  h.seqid = GetBe64(p + kOffSeqid);
  DS_ASSIGN_OR_RETURN(h.label, GetString(p + kOffLabel, kLenLabel, "label"));
  DS_ASSIGN_OR_RETURN(h.csum_alg, GetString(p + kOffCsumAlg, kLenCsumAlg, "checksum_alg"));
  DS_ASSIGN_OR_RETURN(h.uuid, GetString(p + kOffUuid, kLenUuid, "uuid"));
  DS_ASSIGN_OR_RETURN(h.subsystem, GetString(p + kOffSubsystem, kLenSubsystem, "subsystem"));
  std::memcpy(h.salt.data(), p + kOffSalt, kLenSalt);
  std::memcpy(h.csum.data(), p + kOffCsum, kLenCsum);
  size_t cs = HashSize(h.csum_alg);
  if (cs == 0 || cs > kLenCsum)
    return Unsupported("checksum algorithm '" + h.csum_alg + "' is not supported");
  for (size_t i = kOffHdrOffset + 8; i < kOffCsum; ++i)
    if (p[i]) return Corrupt("reserved bytes 264..447 of the binary header are not zero");
  for (size_t i = kOffCsum + cs; i < kBinaryHeaderSize; ++i)
    if (p[i]) return Corrupt("reserved bytes after the checksum are not zero");
  return h;
}

Result<Bytes> ComputeChecksum(const BinaryHeader& h, std::span<const uint8_t> json_area) {
  BinaryHeader zeroed = h;
  zeroed.csum.fill(0);
  Bytes bin = EncodeBinaryHeader(zeroed);
  return HashParts(h.csum_alg, {bin, json_area});
}

}  // namespace ds::luks2
