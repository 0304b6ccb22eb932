// One LUKS2 header in memory: the fields the two binary headers share, and the JSON document.
// The JSON is kept as read (ordered, unknown fields and foreign tokens untouched) and is the
// source of truth; typed views (KeyslotInfo, SegmentInfo ...) are parsed from it on demand,
// only after Validate() accepted it.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "util/bytes.h"
#include "util/status.h"

namespace ds::luks2 {

using Json = nlohmann::ordered_json;

struct Metadata {
  uint64_t hdr_size = 0;  // one copy: 4096 + JSON area
  uint64_t seqid = 0;
  std::string label, subsystem, uuid;
  std::string csum_alg = "sha256";
  std::array<uint8_t, 64> salt_primary{}, salt_secondary{};
  Json json;

  uint64_t json_area_size() const { return hdr_size - 4096; }
  uint64_t keyslots_size() const;
  // End of metadata + keyslots areas: the least a header device must hold.
  uint64_t areas_end() const { return 2 * hdr_size + keyslots_size(); }
  std::vector<std::string> requirements() const;  // config.requirements.mandatory
};

// The JSON text as stored: compact, no slash escaping (what cryptsetup writes).
std::string SerializeJson(const Json& j);

struct KdfInfo {
  std::string type;  // pbkdf2 | argon2i | argon2id
  std::string hash;  // pbkdf2
  uint32_t iterations = 0;
  uint32_t time = 0, memory_kib = 0, cpus = 0;  // argon2
  Bytes salt;
};

struct KeyslotInfo {
  int id = -1;
  std::string type;
  uint32_t key_size = 0;
  std::optional<int> priority;
  KdfInfo kdf;                  // luks2 only
  std::string af_hash;          // luks2 only
  uint32_t af_stripes = 0;      // luks2 only
  std::string area_type;
  std::string area_cipher;      // raw areas
  uint32_t area_key_size = 0;   // raw areas
  uint64_t area_offset = 0, area_size = 0;
  // Why diskseal cannot unlock with this slot (KeyslotHandler::Usable); empty when it can. The
  // kdf/af fields above are then filled only as far as they are well-formed.
  std::string unusable;
};

struct SegmentInfo {
  int id = -1;
  std::string type;              // crypt | linear | (unknown types are kept but not opened)
  uint64_t offset = 0;
  std::optional<uint64_t> size;  // nullopt: "dynamic" (to the end of the device)
  uint64_t iv_tweak = 0;         // crypt
  std::string cipher;            // crypt
  uint32_t sector_size = 512;    // crypt
  std::vector<std::string> flags;
  bool has_flag(const std::string& f) const;
};

struct DigestInfo {
  int id = -1;
  std::string type;
  std::vector<int> keyslots, segments;
  std::string hash;
  uint32_t iterations = 0;
  Bytes salt, digest;
  std::string unusable;  // why diskseal cannot verify keys with it (DigestHandler::Usable); "" if it can
};

struct TokenInfo {
  int id = -1;
  std::string type;
  std::vector<int> keyslots;
  Json raw;  // exactly as stored
};

// Typed views. Preconditions: the metadata passed Validate(). Sorted by id.
std::vector<KeyslotInfo> Keyslots(const Metadata& md);
std::vector<SegmentInfo> Segments(const Metadata& md);
std::vector<DigestInfo> Digests(const Metadata& md);
std::vector<TokenInfo> Tokens(const Metadata& md);
std::optional<KeyslotInfo> FindKeyslot(const Metadata& md, int id);
// The digest a keyslot belongs to (every keyslot has exactly one), if any.
std::optional<DigestInfo> DigestOfKeyslot(const Metadata& md, int keyslot);
std::optional<DigestInfo> DigestOfSegment(const Metadata& md, int segment);

// Every rule of the format that can be checked without keys: structure and types, numbered
// object keys, limits, references between objects, areas inside the keyslots area and not
// overlapping, segment alignment, config sizes agreeing with hdr_size, and each typed object's
// own rules (keyslot/digest/token handlers). The error names the object and the rule.
Status Validate(const Metadata& md);

// obj[key] when obj is an object holding a string there; `def` otherwise. Never throws.
inline std::string StrOr(const Json& obj, const char* key, const std::string& def = "") {
  if (!obj.is_object()) return def;
  auto it = obj.find(key);
  return it != obj.end() && it->is_string() ? it->get<std::string>() : def;
}

// Decimal-string u64 as LUKS2 stores it ("16777216").
std::optional<uint64_t> JsonU64(const Json& j);
inline std::string U64Str(uint64_t v) { return std::to_string(v); }
// A JSON integer (not float, not string) in [0, UINT32_MAX].
std::optional<uint32_t> JsonU32(const Json& j);

}  // namespace ds::luks2
