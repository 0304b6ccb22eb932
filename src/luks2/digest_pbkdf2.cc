// The "pbkdf2" digest: PBKDF2(volume key, salt, iterations) with the digest's hash; a candidate
// key is right when it reproduces the stored value.
#include <openssl/crypto.h>

#include "crypto/crypto.h"
#include "luks2/digest.h"
#include "luks2/format.h"

namespace ds::luks2 {

namespace {

class Pbkdf2Digest final : public DigestHandler {
 public:
  std::string_view type() const override { return "pbkdf2"; }

  Status Usable(const Json& d, const std::string& id) const override {
    const std::string where = "digest " + id + ": ";
    if (!d.contains("hash") || !d["hash"].is_string() || HashSize(d["hash"].get<std::string>()) == 0)
      return Corrupt(where + "hash must name a known hash");
    if (!d.contains("iterations") || !d["iterations"].is_number_integer() ||
        JsonU32(d["iterations"]).value_or(0) == 0)
      return Corrupt(where + "iterations must be a positive 32-bit integer");
    for (const char* f : {"salt", "digest"}) {
      if (!d.contains(f) || !d[f].is_string()) return Corrupt(where + f + " must be a base64 string");
      auto b = Base64Decode(d[f].get<std::string>());
      if (!b || b->empty() || b->size() > 64) return Corrupt(where + f + " is not valid base64 of 1..64 bytes");
    }
    return Status::Ok();
  }

  Result<bool> Verify(const DigestInfo& d, std::span<const uint8_t> key) const override {
    Bytes out(d.digest.size());
    DS_RETURN_IF_ERROR(Pbkdf2(d.hash, key, d.salt, d.iterations, out));
    bool same = CRYPTO_memcmp(out.data(), d.digest.data(), out.size()) == 0;
    OPENSSL_cleanse(out.data(), out.size());
    return same;
  }
};

}  // namespace

const DigestHandler* FindDigestHandler(std::string_view type) {
  static const Pbkdf2Digest pbkdf2;
  return type == pbkdf2.type() ? &pbkdf2 : nullptr;
}

Result<Json> CreatePbkdf2Digest(std::span<const uint8_t> key, const std::string& hash,
                                uint32_t iterations) {
  size_t hs = HashSize(hash);
  if (hs == 0) return Unsupported("unknown digest hash '" + hash + "'");
  Bytes salt(kKdfSaltSize), digest(hs);
  DS_RETURN_IF_ERROR(RandomBytes(salt));
  DS_RETURN_IF_ERROR(Pbkdf2(hash, key, salt, iterations, digest));
  Json d;
  d["type"] = "pbkdf2";
  d["keyslots"] = Json::array();
  d["segments"] = Json::array();
  d["hash"] = hash;
  d["iterations"] = iterations;
  d["salt"] = Base64Encode(salt);
  d["digest"] = Base64Encode(digest);
  return d;
}

}  // namespace ds::luks2
