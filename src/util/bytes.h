// Small byte helpers: big-endian integers (the LUKS2 binary header is big-endian), hex and
// base64 (standard and URL-safe), and decimal-string u64 parsing as the LUKS2 JSON uses it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace ds {

using Bytes = std::vector<uint8_t>;

inline void PutBe16(uint8_t* p, uint16_t v) { p[0] = uint8_t(v >> 8); p[1] = uint8_t(v); }
inline void PutBe32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = uint8_t(v >> (24 - 8 * i));
}
inline void PutBe64(uint8_t* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = uint8_t(v >> (56 - 8 * i));
}
inline uint16_t GetBe16(const uint8_t* p) { return uint16_t((p[0] << 8) | p[1]); }
inline uint32_t GetBe32(const uint8_t* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | p[i];
  return v;
}
inline uint64_t GetBe64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | p[i];
  return v;
}

std::string HexEncode(std::span<const uint8_t> b);
std::optional<Bytes> HexDecode(std::string_view s);
std::string Base64Encode(std::span<const uint8_t> b);
// Accepts padded or unpadded standard base64; nullopt on any other character.
std::optional<Bytes> Base64Decode(std::string_view s);
std::string Base64UrlEncode(std::span<const uint8_t> b);  // no padding (RFC 7515)
std::optional<Bytes> Base64UrlDecode(std::string_view s);

// Strict unsigned decimal: digits only, no sign, no leading '+', fits in 64 bits.
std::optional<uint64_t> ParseU64(std::string_view s);
// Sizes as cryptsetup writes them on the command line: "16M", "4096", "1G", "512k" (binary units).
std::optional<uint64_t> ParseSize(std::string_view s);

inline std::span<const uint8_t> AsBytes(std::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

// Levenshtein distance between two words: "did you mean" suggestions (CLI flags, config keys).
size_t EditDistance(std::string_view a, std::string_view b);

}  // namespace ds
