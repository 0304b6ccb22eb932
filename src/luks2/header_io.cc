#include "luks2/header_io.h"

#include <cstring>

#include "crypto/crypto.h"
#include "luks2/binary_header.h"
#include "luks2/format.h"

namespace ds::luks2 {

namespace {

struct CopyRead {
  CopyStatus status;
  Metadata md;
};

Result<Metadata> ParseCopy(BlockDevice& dev, uint64_t offset, bool secondary, CopyStatus& st) {
  if (dev.Size() < offset + kBinaryHeaderSize) return Corrupt("device too small to hold it");
  Bytes bin(kBinaryHeaderSize);
  DS_RETURN_IF_ERROR(dev.ReadAt(offset, bin));
  st.present = std::memcmp(bin.data(), secondary ? kMagicSecondary : kMagicPrimary, 6) == 0;
  DS_ASSIGN_OR_RETURN(BinaryHeader h, DecodeBinaryHeader(bin, secondary, offset));
  st.seqid = h.seqid;
  if (dev.Size() < offset + h.hdr_size)
    return Corrupt("JSON area runs past the end of the device (truncated header)");
  Bytes area(h.hdr_size - kBinaryHeaderSize);
  DS_RETURN_IF_ERROR(dev.ReadAt(offset + kBinaryHeaderSize, area));
  DS_ASSIGN_OR_RETURN(Bytes csum, ComputeChecksum(h, area));
  if (std::memcmp(csum.data(), h.csum.data(), csum.size()) != 0)
    return Corrupt("checksum mismatch");
  if (area[0] != '{') return Corrupt("JSON area must start with '{'");
  const uint8_t* nul = static_cast<const uint8_t*>(std::memchr(area.data(), 0, area.size()));
  if (!nul) return Corrupt("JSON area has no terminating NUL");
  for (const uint8_t* p = nul; p < area.data() + area.size(); ++p)
    if (*p) return Corrupt("JSON area has non-zero bytes after the JSON text");
  std::string_view text(reinterpret_cast<const char*>(area.data()), size_t(nul - area.data()));
  Metadata md;
  try {
    md.json = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  } catch (const std::exception& e) {
    return Corrupt(std::string("JSON area cannot be parsed: ") + e.what());
  }
  if (md.json.is_discarded()) return Corrupt("JSON area is not valid JSON");
  md.hdr_size = h.hdr_size;
  md.seqid = h.seqid;
  md.label = h.label;
  md.subsystem = h.subsystem;
  md.uuid = h.uuid;
  md.csum_alg = h.csum_alg;
  (secondary ? md.salt_secondary : md.salt_primary) = h.salt;
  // Validate() checks types before every access; the catch is a second line of defence so
  // that no header, however hostile, can end the process.
  try {
    DS_RETURN_IF_ERROR(Validate(md));
  } catch (const std::exception& e) {
    return Corrupt(std::string("malformed metadata: ") + e.what());
  }
  return md;
}

CopyRead ReadCopy(BlockDevice& dev, uint64_t offset, bool secondary) {
  CopyRead r;
  r.status.offset = offset;
  auto md = ParseCopy(dev, offset, secondary, r.status);
  if (md.ok()) {
    r.status.valid = true;
    r.md = std::move(md).value();
  } else {
    r.status.error = md.status().message();
  }
  return r;
}

}  // namespace

Result<bool> HasLuksMagic(BlockDevice& dev) {
  if (dev.Size() < 8) return false;
  uint8_t m[6];
  DS_RETURN_IF_ERROR(dev.ReadAt(0, m));
  return std::memcmp(m, kMagicPrimary, 6) == 0;
}

Result<HeaderRead> ReadHeader(BlockDevice& dev) {
  HeaderRead out;
  CopyRead p = ReadCopy(dev, 0, false);
  out.primary = p.status;
  CopyRead s;
  // Only when the primary does not say where the secondary is do we scan every allowed offset:
  // with a readable primary, a stale secondary from an older format at another offset must not
  // be mistaken for the current one.
  uint64_t hinted = 0;
  if (dev.Size() >= kBinaryHeaderSize) {
    Bytes bin(kBinaryHeaderSize);
    if (dev.ReadAt(0, bin).ok() && std::memcmp(bin.data(), kMagicPrimary, 6) == 0) {
      uint64_t hs = GetBe64(bin.data() + kOffHdrSize);
      if (IsValidMetadataSize(hs)) hinted = hs;
    }
  }
  if (hinted) {
    s = ReadCopy(dev, hinted, true);
  } else {
    s.status.offset = kMetadataSizes[0];
    s.status.error = "not found at any of the nine allowed offsets";
    for (uint64_t off : kMetadataSizes) {
      CopyRead c = ReadCopy(dev, off, true);
      if (c.status.valid || (c.status.present && !s.status.present)) s = std::move(c);
      if (s.status.valid) break;
    }
  }
  out.secondary = s.status;
  if (!p.status.valid && !s.status.valid) {
    if (!p.status.present && !s.status.present)
      return Corrupt(dev.name() + ": not a LUKS2 device (no LUKS2 header found)");
    return Corrupt(dev.name() + ": LUKS2 header is damaged: primary copy at 0: " +
                   p.status.error + "; secondary copy at " + std::to_string(s.status.offset) +
                   ": " + s.status.error);
  }
  if (p.status.valid && (!s.status.valid || p.status.seqid >= s.status.seqid)) {
    out.md = std::move(p.md);
    if (s.status.valid) out.md.salt_secondary = s.md.salt_secondary;
  } else {
    out.md = std::move(s.md);
    out.from_secondary = true;
    if (p.status.valid) out.md.salt_primary = p.md.salt_primary;
  }
  return out;
}

Result<Bytes> EncodeCopy(const Metadata& md, bool secondary) {
  const std::string text = SerializeJson(md.json);
  if (text.size() >= md.json_area_size())
    return InvalidArgument("LUKS2 metadata does not fit in the " +
                           std::to_string(md.json_area_size()) + "-byte JSON area");
  Bytes out(md.hdr_size, 0);
  std::memcpy(out.data() + kBinaryHeaderSize, text.data(), text.size());
  BinaryHeader h;
  h.secondary = secondary;
  h.hdr_size = md.hdr_size;
  h.seqid = md.seqid;
  h.label = md.label;
  h.subsystem = md.subsystem;
  h.uuid = md.uuid;
  h.csum_alg = md.csum_alg;
  h.salt = secondary ? md.salt_secondary : md.salt_primary;
  h.hdr_offset = secondary ? md.hdr_size : 0;
  DS_ASSIGN_OR_RETURN(Bytes csum, ComputeChecksum(
      h, std::span<const uint8_t>(out.data() + kBinaryHeaderSize, md.json_area_size())));
  std::memcpy(h.csum.data(), csum.data(), csum.size());
  Bytes bin = EncodeBinaryHeader(h);
  std::memcpy(out.data(), bin.data(), bin.size());
  return out;
}

Status WriteCopy(BlockDevice& dev, const Metadata& md, bool secondary) {
  DS_ASSIGN_OR_RETURN(Bytes copy, EncodeCopy(md, secondary));
  const uint64_t off = secondary ? md.hdr_size : 0;
  if (dev.Size() < off + copy.size())
    return InvalidArgument(dev.name() + ": too small for a " + std::to_string(md.hdr_size) +
                           "-byte LUKS2 header copy");
  // 1. binary header with a zero checksum: the copy is invalid from here until step 3.
  Bytes bin(copy.begin(), copy.begin() + kBinaryHeaderSize);
  std::memset(bin.data() + kOffCsum, 0, kLenCsum);
  DS_RETURN_IF_ERROR(dev.WriteAt(off, bin));
  // 2. the JSON area, 3. the binary header with its checksum, then make it durable.
  DS_RETURN_IF_ERROR(dev.WriteAt(off + kBinaryHeaderSize,
                                 std::span<const uint8_t>(copy).subspan(kBinaryHeaderSize)));
  DS_RETURN_IF_ERROR(dev.WriteAt(off, std::span<const uint8_t>(copy).first(kBinaryHeaderSize)));
  return dev.Sync();
}

Status WriteHeader(BlockDevice& dev, Metadata& md) {
  DS_RETURN_IF_ERROR(Validate(md).WithContext(dev.name() + ": refusing to write an invalid header"));
  if (dev.Size() < 2 * md.hdr_size)
    return InvalidArgument(dev.name() + ": device is too small for the LUKS2 metadata");
  // Optimistic concurrency: no valid copy on disk may be newer than the one we read. Only a copy
  // that passes every check counts: a torn copy left by a crash (which lost to the other copy
  // when the header was read) must not block the very write that supersedes it.
  bool secondary_first = false;
  {
    CopyRead p = ReadCopy(dev, 0, false);
    CopyRead sec = ReadCopy(dev, md.hdr_size, true);
    const bool pv = p.status.valid && p.md.uuid == md.uuid, sv = sec.status.valid && sec.md.uuid == md.uuid;
    const uint64_t newest = std::max(pv ? p.status.seqid : 0, sv ? sec.status.seqid : 0);
    if ((pv || sv) && newest > md.seqid)
      return Busy(dev.name() + ": the LUKS2 header changed on disk since it was read (seqid " +
                  std::to_string(newest) + ", expected " + std::to_string(md.seqid) +
                  "): concurrent update refused");
    // The newest valid copy is overwritten last: until the other copy is complete it is the state
    // a crash comes back to (after an earlier crash tore one copy, or left it a commit behind).
    secondary_first = pv && (!sv || sec.status.seqid < p.status.seqid);
  }
  static const std::array<uint8_t, 64> kZero{};
  if (md.salt_primary == kZero) DS_RETURN_IF_ERROR(RandomBytes(md.salt_primary));
  if (md.salt_secondary == kZero) DS_RETURN_IF_ERROR(RandomBytes(md.salt_secondary));
  Metadata next = md;
  ++next.seqid;
  DS_RETURN_IF_ERROR(WriteCopy(dev, next, secondary_first));
  DS_RETURN_IF_ERROR(WriteCopy(dev, next, !secondary_first));
  md.seqid = next.seqid;
  return Status::Ok();
}

}  // namespace ds::luks2
