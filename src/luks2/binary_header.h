// The 4096-byte binary header that starts each of the two LUKS2 metadata copies, and the
// checksum that binds it to its JSON area.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "util/bytes.h"
#include "util/status.h"

namespace ds::luks2 {

struct BinaryHeader {
  bool secondary = false;  // magic SKUL\xba\xbe instead of LUKS\xba\xbe
  uint16_t version = 2;
  uint64_t hdr_size = 0;  // this copy: binary header + JSON area
  uint64_t seqid = 0;
  std::string label;
  std::string csum_alg = "sha256";
  std::array<uint8_t, 64> salt{};
  std::string uuid;
  std::string subsystem;
  uint64_t hdr_offset = 0;  // where this copy lives on the device
  std::array<uint8_t, 64> csum{};
};

// Serialises `h` (checksum field as stored in h.csum) into exactly 4096 bytes.
Bytes EncodeBinaryHeader(const BinaryHeader& h);

// Parses the fixed fields and checks what can be checked without the JSON area: magic (primary
// or secondary as `expect_secondary` says), version 2, an allowed hdr_size, hdr_offset equal to
// where it was read, strings NUL-terminated, padding zero. The error names the broken rule.
Result<BinaryHeader> DecodeBinaryHeader(std::span<const uint8_t> raw, bool expect_secondary,
                                        uint64_t read_offset);

// The checksum of a copy: hash(binary header with csum zeroed || whole JSON area).
Result<Bytes> ComputeChecksum(const BinaryHeader& h, std::span<const uint8_t> json_area);

}  // namespace ds::luks2
