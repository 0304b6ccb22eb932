// LUKS2 on-disk constants. The format is described in docs/luks2-format.md (our note) and in
// cryptsetup's docs/on-disk-format-luks2.pdf (the authority).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace ds::luks2 {

inline constexpr size_t kBinaryHeaderSize = 4096;
inline constexpr uint8_t kMagicPrimary[6] = {'L', 'U', 'K', 'S', 0xba, 0xbe};
inline constexpr uint8_t kMagicSecondary[6] = {'S', 'K', 'U', 'L', 0xba, 0xbe};
inline constexpr uint16_t kVersion = 2;

// Field offsets and lengths inside the 4096-byte binary header (all integers big-endian).
inline constexpr size_t kOffMagic = 0, kLenMagic = 6;
inline constexpr size_t kOffVersion = 6;
inline constexpr size_t kOffHdrSize = 8;
inline constexpr size_t kOffSeqid = 16;
inline constexpr size_t kOffLabel = 24, kLenLabel = 48;
inline constexpr size_t kOffCsumAlg = 72, kLenCsumAlg = 32;
inline constexpr size_t kOffSalt = 104, kLenSalt = 64;
inline constexpr size_t kOffUuid = 168, kLenUuid = 40;
inline constexpr size_t kOffSubsystem = 208, kLenSubsystem = 48;
inline constexpr size_t kOffHdrOffset = 256;
inline constexpr size_t kOffCsum = 448, kLenCsum = 64;

// Allowed sizes of one metadata copy (binary header + JSON area). The secondary copy starts at
// offset = this size, so a reader that lost the primary tries each of these.
inline constexpr std::array<uint64_t, 9> kMetadataSizes = {
    16u << 10, 32u << 10, 64u << 10, 128u << 10, 256u << 10,
    512u << 10, 1u << 20, 2u << 20, 4u << 20};

inline constexpr int kMaxKeyslots = 32;
inline constexpr int kMaxTokens = 32;
inline constexpr int kMaxSegments = 32;
inline constexpr int kMaxDigests = 8;
inline constexpr uint64_t kMaxKeyslotsSize = 128u << 20;
inline constexpr uint64_t kKeyslotsAlign = 4096;

inline constexpr uint64_t kDefaultMetadataSize = 16u << 10;
inline constexpr uint64_t kDefaultDataOffset = 16u << 20;
inline constexpr uint32_t kAfStripes = 4000;
inline constexpr size_t kKdfSaltSize = 32;

// cryptsetup's PBKDF limits; we enforce the same so every volume we write it can open.
inline constexpr uint32_t kMinPbkdf2Iterations = 1000;
inline constexpr uint32_t kMinArgon2Time = 4;
inline constexpr uint32_t kMinArgon2MemoryKiB = 32;
inline constexpr uint32_t kMaxArgon2MemoryKiB = 4u << 20;
inline constexpr uint32_t kMaxArgon2Threads = 4;

inline bool IsValidMetadataSize(uint64_t s) {
  for (uint64_t v : kMetadataSizes)
    if (v == s) return true;
  return false;
}

}  // namespace ds::luks2
