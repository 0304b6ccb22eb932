// Keyslot variants, chosen by the JSON "type" through a registry (like cryptsetup's
// keyslot_handler table). "luks2" slots hold the volume key under a passphrase; "reencrypt" slots
// carry the state of an in-place operation and never unlock anything.
#pragma once

#include <span>
#include <string_view>

#include "io/block_device.h"
#include "luks2/metadata.h"
#include "util/secure_buffer.h"

namespace ds::luks2 {

// How a new luks2 keyslot derives its key from the passphrase.
struct KdfSpec {
  std::string type = "argon2id";  // pbkdf2 | argon2i | argon2id
  std::string hash = "sha256";    // pbkdf2 (and the AF hash)
  uint32_t iterations = 0;        // pbkdf2
  uint32_t time = 0;              // argon2
  uint32_t memory_kib = 0;        // argon2
  uint32_t cpus = 0;              // argon2
};

class KeyslotHandler {
 public:
  virtual ~KeyslotHandler() = default;
  virtual std::string_view type() const = 0;
  // Rules specific to this type; the generic ones (type, key_size, area offset/size) are checked
  // by Validate() in metadata.cc before this is called. `id` is for messages.
  // These are the rules a header is refused for (cryptsetup's loader refuses it too).
  virtual Status Validate(const Json& keyslot, const std::string& id) const = 0;
  // Whether diskseal can use the slot, asked only of a slot that passed Validate(). A slot that
  // fails here (a KDF type diskseal does not implement, out-of-range costs ...) keeps the header
  // readable: dump shows it with the reason, unlock skips it, the other slots still unlock.
  virtual Status Usable(const Json& /*keyslot*/, const std::string& /*id*/) const {
    return Status::Ok();
  }
  virtual bool unlockable() const { return false; }
  // Derives the key from the passphrase and reads the slot's key material from `md_dev`.
  // Returns the candidate volume key; the caller checks it against the digest.
  virtual Result<SecureBuffer> Open(BlockDevice& md_dev, const KeyslotInfo& ks,
                                    std::span<const uint8_t> passphrase) const;
};

// nullptr for a type we do not know (such slots are kept as stored and never used).
const KeyslotHandler* FindKeyslotHandler(std::string_view type);

// Bytes of the keyslot area a key of key_size bytes needs with kAfStripes stripes (4 KiB aligned).
uint64_t Luks2KeyslotAreaSize(uint32_t key_size);

// Creates a luks2 keyslot: derives a key with `kdf` from the passphrase, AF-splits `volume_key`,
// encrypts it with aes-xts-plain64 and writes it at area_offset of `md_dev` (not synced: the
// caller's header commit syncs). Returns the keyslot's JSON object.
Result<Json> CreateLuks2Keyslot(BlockDevice& md_dev, uint64_t area_offset, uint64_t area_size,
                                const KdfSpec& kdf, std::span<const uint8_t> passphrase,
                                std::span<const uint8_t> volume_key);

// Derives `out.size()` bytes from the passphrase with the keyslot's KDF.
Status DeriveKey(const KdfInfo& kdf, std::span<const uint8_t> passphrase, std::span<uint8_t> out);

}  // namespace ds::luks2
