// Digest variants ("pbkdf2" is the only one LUKS2 defines): how a candidate volume key is
// recognised as the right one. Chosen by JSON type through a registry.
#pragma once

#include <span>
#include <string_view>

#include "luks2/metadata.h"

namespace ds::luks2 {

class DigestHandler {
 public:
  virtual ~DigestHandler() = default;
  virtual std::string_view type() const = 0;
  // Whether diskseal can verify keys with this digest. Not a header rule: cryptsetup loads a
  // header whatever a digest's own fields hold, so a digest failing here keeps the header
  // readable and only the keyslots behind it cannot unlock (asked when the header is parsed).
  virtual Status Usable(const Json& digest, const std::string& id) const = 0;
  // True when `key` is the key this digest describes. Constant time in the comparison.
  virtual Result<bool> Verify(const DigestInfo& d, std::span<const uint8_t> key) const = 0;
};

const DigestHandler* FindDigestHandler(std::string_view type);

// A new pbkdf2 digest of `key` (salt random, length = hash size).
Result<Json> CreatePbkdf2Digest(std::span<const uint8_t> key, const std::string& hash,
                                uint32_t iterations);

}  // namespace ds::luks2
