// What a device holds, recognised from its first bytes the way blkid does for the formats
// diskseal meets: LUKS1/2, LVM2 PV, xfs, swap, btrfs, ext2/3/4, vfat. Used to find volumes
// (machine/discovery), to ask before formatting over data, and to fingerprint the plaintext a
// detached header belongs to (engine/binding). Pure function; thread-safe.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>

namespace ds::volume {

// Bytes ProbeSignature may look at: enough for every format above (btrfs at 64 KiB).
inline constexpr uint64_t kSignatureProbeBytes = 68u << 10;

struct Signature {
  std::string type;   // "luks2", "luks1", "LVM2_member", "xfs", "swap", "btrfs", "ext4", "ext3", "ext2", "vfat"
  std::string uuid;   // as blkid prints it; empty when the format has none
  std::string label;  // empty when there is none
  // The smallest I/O the format issues, in bytes (ext2/3/4: block size; xfs: sector size; btrfs:
  // sector size; vfat: bytes per sector; swap: 4096); 0 when unknown. A mapping whose logical
  // block size grows past it (dm-crypt with a larger encryption sector) breaks the mounted
  // filesystem, so online encryption never chooses a larger sector.
  uint32_t io_unit = 0;
};

// The signature at the start of a device (`first_bytes` holds up to kSignatureProbeBytes of it);
// nullopt when nothing matches.
std::optional<Signature> ProbeSignature(std::span<const uint8_t> first_bytes);

}  // namespace ds::volume
