// The "luks2" keyslot: volume key, AF-split into 4000 stripes, encrypted in the keyslot area under
// a key derived from the passphrase by PBKDF2 or Argon2.
#include <cstring>

#include "crypto/crypto.h"
#include "luks2/format.h"
#include "luks2/keyslot.h"

namespace ds::luks2 {

namespace {

constexpr uint32_t kMaxKeySize = 1024;  // bytes; bounds the AF buffer a hostile header can ask for

uint64_t AfBytes(uint32_t key_size, uint32_t stripes) {
  uint64_t n = uint64_t(key_size) * stripes;
  return (n + 511) / 512 * 512;
}

Status Rule(const std::string& id, const std::string& what) {
  return Corrupt("keyslot " + id + ": " + what);
}

class Luks2Keyslot final : public KeyslotHandler {
 public:
  std::string_view type() const override { return "luks2"; }
  bool unlockable() const override { return true; }

  // What a luks2 keyslot must hold for the header to load at all: the objects and field types
  // cryptsetup's loader checks. Fields of the other KDF left in "kdf" are allowed (cryptsetup
  // drops them when it loads the header), and a KDF type nobody knows is allowed too: such a
  // slot is kept, shown, and refused by Usable() below, never the whole header.
  Status Validate(const Json& ks, const std::string& id) const override {
    for (const char* f : {"kdf", "af", "area"})
      if (!ks.contains(f) || !ks[f].is_object())
        return Rule(id, std::string("\"") + f + "\" must be an object");
    const Json& kdf = ks["kdf"];
    // Strings must also be non-empty, as cryptsetup requires of every string it checks here.
    auto need = [&](const Json& obj, const char* obj_name, const char* f, bool integer) -> Status {
      if (obj.contains(f) && (integer ? obj[f].is_number_integer()
                                      : obj[f].is_string() && !obj[f].get_ref<const std::string&>().empty()))
        return Status::Ok();
      return Rule(id, std::string(obj_name) + "." + f + (integer ? " must be an integer" : " must be a non-empty string"));
    };
    DS_RETURN_IF_ERROR(need(kdf, "kdf", "type", false));
    const std::string kt = kdf["type"].get<std::string>();
    if (kt == "pbkdf2") {
      for (const char* f : {"hash", "salt"}) DS_RETURN_IF_ERROR(need(kdf, "kdf", f, false));
      DS_RETURN_IF_ERROR(need(kdf, "kdf", "iterations", true));
    } else if (kt == "argon2i" || kt == "argon2id") {
      DS_RETURN_IF_ERROR(need(kdf, "kdf", "salt", false));
      for (const char* f : {"time", "memory", "cpus"}) DS_RETURN_IF_ERROR(need(kdf, "kdf", f, true));
    }
    const Json& af = ks["af"];
    if (StrOr(af, "type") != "luks1") return Rule(id, "af.type must be \"luks1\"");
    DS_RETURN_IF_ERROR(need(af, "af", "hash", false));
    DS_RETURN_IF_ERROR(need(af, "af", "stripes", true));
    const Json& area = ks["area"];
    if (StrOr(area, "type") != "raw") return Rule(id, "area.type must be \"raw\"");
    DS_RETURN_IF_ERROR(need(area, "area", "encryption", false));
    DS_RETURN_IF_ERROR(need(area, "area", "key_size", true));
    return Status::Ok();
  }

  // What diskseal needs to unlock with the slot (bounded sizes, a KDF and hashes it implements).
  Status Usable(const Json& ks, const std::string& id) const override {
    auto key_size = JsonU32(ks["key_size"]);
    if (!key_size || *key_size == 0 || *key_size > kMaxKeySize)
      return Rule(id, "key_size must be 1.." + std::to_string(kMaxKeySize) + " bytes");
    const Json& kdf = ks["kdf"];
    const std::string kt = StrOr(kdf, "type");
    if (!Base64Decode(StrOr(kdf, "salt")) || Base64Decode(StrOr(kdf, "salt"))->empty())
      return Rule(id, "kdf.salt must be non-empty base64");
    if (kt == "pbkdf2") {
      if (HashSize(StrOr(kdf, "hash")) == 0) return Rule(id, "kdf.hash must name a known hash");
      auto it = JsonU32(kdf["iterations"]);
      if (!it || *it == 0) return Rule(id, "kdf.iterations must be a positive 32-bit integer");
    } else if (kt == "argon2i" || kt == "argon2id") {
      auto t = JsonU32(kdf["time"]), m = JsonU32(kdf["memory"]), c = JsonU32(kdf["cpus"]);
      if (!t || *t == 0) return Rule(id, "kdf.time must be a positive 32-bit integer");
      if (!c || *c == 0 || *c > 64) return Rule(id, "kdf.cpus must be 1..64");
      if (!m || *m < 8 * *c || *m > kMaxArgon2MemoryKiB)
        return Rule(id, "kdf.memory must be 8*cpus..4194304 KiB");
    } else {
      return Rule(id, "kdf type '" + kt + "' is not supported (pbkdf2, argon2i, argon2id)");
    }
    const Json& af = ks["af"];
    if (HashSize(StrOr(af, "hash")) == 0) return Rule(id, "af.hash must name a known hash");
    if (JsonU32(af["stripes"]) != kAfStripes) return Rule(id, "af.stripes must be 4000");
    const Json& area = ks["area"];
    auto aks = JsonU32(area["key_size"]);
    if (!aks || *aks == 0 || *aks > kMaxKeySize) return Rule(id, "area.key_size is out of range");
    uint64_t size = JsonU64(area["size"]).value_or(0);
    if (size < AfBytes(*key_size, kAfStripes))
      return Rule(id, "area size " + std::to_string(size) + " is smaller than the " +
                          std::to_string(AfBytes(*key_size, kAfStripes)) + " bytes the key material needs");
    return Status::Ok();
  }

  Result<SecureBuffer> Open(BlockDevice& md_dev, const KeyslotInfo& ks,
                            std::span<const uint8_t> passphrase) const override {
    SecureBuffer derived(ks.area_key_size);
    DS_RETURN_IF_ERROR(DeriveKey(ks.kdf, passphrase, derived.span()));
    DS_ASSIGN_OR_RETURN(auto cipher, SectorCipher::Create(ks.area_cipher, derived.span()));
    SecureBuffer material(AfBytes(ks.key_size, ks.af_stripes));
    DS_RETURN_IF_ERROR(md_dev.ReadAt(ks.area_offset, material.span()));
    DS_RETURN_IF_ERROR(cipher->Decrypt(material.span(), 0, 512));
    SecureBuffer key(ks.key_size);
    DS_RETURN_IF_ERROR(AfMerge(material.span(), ks.af_stripes, ks.af_hash, key.span()));
    return key;
  }
};

}  // namespace

const KeyslotHandler& Luks2KeyslotHandler() {
  static const Luks2Keyslot h;
  return h;
}

uint64_t Luks2KeyslotAreaSize(uint32_t key_size) {
  uint64_t n = uint64_t(key_size) * kAfStripes;
  return (n + kKeyslotsAlign - 1) / kKeyslotsAlign * kKeyslotsAlign;
}

Status DeriveKey(const KdfInfo& kdf, std::span<const uint8_t> passphrase, std::span<uint8_t> out) {
  if (kdf.type == "pbkdf2") return Pbkdf2(kdf.hash, passphrase, kdf.salt, kdf.iterations, out);
  if (kdf.type == "argon2i" || kdf.type == "argon2id")
    return Argon2(kdf.type == "argon2i" ? Argon2Type::kArgon2i : Argon2Type::kArgon2id, passphrase,
                  kdf.salt, kdf.time, kdf.memory_kib, kdf.cpus, out);
  return Unsupported("kdf type '" + kdf.type + "' is not supported");
}

Result<Json> CreateLuks2Keyslot(BlockDevice& md_dev, uint64_t area_offset, uint64_t area_size,
                                const KdfSpec& spec, std::span<const uint8_t> passphrase,
                                std::span<const uint8_t> volume_key) {
  const uint32_t key_size = uint32_t(volume_key.size());
  if (area_size < AfBytes(key_size, kAfStripes)) return Internal("keyslot area too small");
  // Keyslot material is encrypted with the data cipher family at the volume key's size, as
  // cryptsetup does: aes-xts-plain64 for 32/64-byte keys, aes-cbc-essiv otherwise.
  const std::string area_cipher = (key_size == 32 || key_size == 64) ? "aes-xts-plain64"
                                                                     : "aes-cbc-essiv:sha256";
  KdfInfo kdf;
  kdf.type = spec.type;
  kdf.hash = spec.hash;
  kdf.iterations = spec.iterations;
  kdf.time = spec.time;
  kdf.memory_kib = spec.memory_kib;
  kdf.cpus = spec.cpus;
  kdf.salt.resize(kKdfSaltSize);
  DS_RETURN_IF_ERROR(RandomBytes(kdf.salt));
  SecureBuffer derived(key_size);
  DS_RETURN_IF_ERROR(DeriveKey(kdf, passphrase, derived.span()));
  DS_ASSIGN_OR_RETURN(auto cipher, SectorCipher::Create(area_cipher, derived.span()));
  SecureBuffer material(AfBytes(key_size, kAfStripes));
  std::memset(material.data(), 0, material.size());
  DS_RETURN_IF_ERROR(AfSplit(volume_key, kAfStripes, spec.hash, material.span()));
  DS_RETURN_IF_ERROR(cipher->Encrypt(material.span(), 0, 512));
  DS_RETURN_IF_ERROR(md_dev.WriteAt(area_offset, material.span()));

  Json ks;
  ks["type"] = "luks2";
  ks["key_size"] = key_size;
  ks["af"] = {{"type", "luks1"}, {"stripes", kAfStripes}, {"hash", spec.hash}};
  ks["area"] = {{"type", "raw"},
                {"offset", U64Str(area_offset)},
                {"size", U64Str(area_size)},
                {"encryption", area_cipher},
                {"key_size", key_size}};
  Json k;
  k["type"] = kdf.type;
  if (kdf.type == "pbkdf2") {
    k["hash"] = kdf.hash;
    k["iterations"] = kdf.iterations;
  } else {
    k["time"] = kdf.time;
    k["memory"] = kdf.memory_kib;
    k["cpus"] = kdf.cpus;
  }
  k["salt"] = Base64Encode(kdf.salt);
  ks["kdf"] = k;
  return ks;
}

}  // namespace ds::luks2
