#include "volume/signature.h"

#include <cstdio>
#include <cstring>
#include <string_view>

namespace ds::volume {

namespace {

std::string HexUuid(const uint8_t* p) {
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out.push_back('-');
    out.push_back(kHex[p[i] >> 4]);
    out.push_back(kHex[p[i] & 15]);
  }
  return out;
}

std::string CString(const uint8_t* p, size_t max) {
  size_t n = 0;
  while (n < max && p[n] != 0) ++n;
  std::string s(reinterpret_cast<const char*>(p), n);
  while (!s.empty() && s.back() == ' ') s.pop_back();  // FAT pads labels with spaces
  return s;
}

uint32_t Le32(const uint8_t* p) { return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24; }

bool Has(std::span<const uint8_t> b, size_t off, std::string_view magic) {
  return b.size() >= off + magic.size() && std::memcmp(b.data() + off, magic.data(), magic.size()) == 0;
}

}  // namespace

std::optional<Signature> ProbeSignature(std::span<const uint8_t> b) {
  Signature info;
  if (Has(b, 0, "LUKS\xba\xbe") && b.size() >= 208) {
    int version = b[6] << 8 | b[7];
    info.type = version == 2 ? "luks2" : version == 1 ? "luks1" : "";
    if (info.type.empty()) return std::nullopt;
    info.uuid = CString(b.data() + 168, 40);
    if (version == 2) info.label = CString(b.data() + 24, 48);
    return info;
  }
  for (size_t sector = 0; sector < 4; ++sector) {
    size_t off = sector * 512;
    if (Has(b, off, "LABELONE") && Has(b, off + 24, "LVM2 001") && b.size() >= off + 32) {
      info.type = "LVM2_member";
      size_t uuid_at = off + Le32(b.data() + off + 20);  // offset_xl: the pv_header in the sector
      if (uuid_at + 32 <= b.size() && uuid_at + 32 <= off + 512) {
        std::string raw(reinterpret_cast<const char*>(b.data() + uuid_at), 32);
        // lvm prints PV UUIDs in 6-4-4-4-4-4-6 groups
        static const int kGroups[] = {6, 4, 4, 4, 4, 4, 6};
        size_t at = 0;
        for (int g : kGroups) {
          if (at) info.uuid.push_back('-');
          info.uuid += raw.substr(at, size_t(g));
          at += size_t(g);
        }
      }
      return info;
    }
  }
  if (Has(b, 0, "XFSB") && b.size() >= 120) {
    info.type = "xfs";
    info.io_unit = uint32_t(b[102]) << 8 | b[103];  // sb_sectsize, big-endian
    info.uuid = HexUuid(b.data() + 32);
    info.label = CString(b.data() + 108, 12);
    return info;
  }
  if (Has(b, 4096 - 10, "SWAPSPACE2") || Has(b, 4096 - 10, "SWAP-SPACE")) {
    info.type = "swap";
    info.io_unit = 4096;
    info.uuid = HexUuid(b.data() + 1024 + 12);
    info.label = CString(b.data() + 1024 + 28, 16);
    return info;
  }
  if (Has(b, 65536 + 64, "_BHRfS_M") && b.size() >= 65536 + 299 + 256) {
    info.type = "btrfs";
    info.io_unit = Le32(b.data() + 65536 + 0x90);  // sectorsize
    info.uuid = HexUuid(b.data() + 65536 + 32);
    info.label = CString(b.data() + 65536 + 299, 256);
    return info;
  }
  if (b.size() >= 1024 + 136 && b[1024 + 56] == 0x53 && b[1024 + 57] == 0xEF) {
    const uint8_t* sb = b.data() + 1024;
    uint32_t compat = Le32(sb + 92), incompat = Le32(sb + 96);
    // extents, 64bit or flex_bg make it ext4; a journal without them is ext3 (blkid's rule)
    info.type = (incompat & (0x40 | 0x80 | 0x200)) ? "ext4" : (compat & 0x4) ? "ext3" : "ext2";
    const uint32_t log = Le32(sb + 24);
    info.io_unit = log <= 6 ? 1024u << log : 0;
    info.uuid = HexUuid(sb + 104);
    info.label = CString(sb + 120, 16);
    return info;
  }
  if (b.size() >= 512 && b[510] == 0x55 && b[511] == 0xAA &&
      (Has(b, 54, "FAT12") || Has(b, 54, "FAT16") || Has(b, 82, "FAT32"))) {
    info.type = "vfat";
    info.io_unit = uint32_t(b[11]) | uint32_t(b[12]) << 8;
    bool fat32 = Has(b, 82, "FAT32");
    uint32_t id = Le32(b.data() + (fat32 ? 67 : 39));
    char buf[10];
    std::snprintf(buf, sizeof buf, "%04X-%04X", id >> 16, id & 0xffff);
    info.uuid = buf;
    info.label = CString(b.data() + (fat32 ? 71 : 43), 11);
    if (info.label == "NO NAME") info.label.clear();
    return info;
  }
  return std::nullopt;
}

}  // namespace ds::volume
