// Cryptographic primitives diskseal needs, all from OpenSSL 3 and libargon2: random bytes, hashes,
// PBKDF2 and Argon2, and the sector cipher used for data and keyslot areas.
// Every function is thread-safe; keys are taken as spans and never copied outside SecureBuffer.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "util/bytes.h"
#include "util/secure_buffer.h"
#include "util/status.h"

namespace ds {

Status RandomBytes(std::span<uint8_t> out);

// Digest size in bytes for a hash name as LUKS2 spells it ("sha256", "sha1", "sha512", ...);
// 0 when OpenSSL does not know the name.
size_t HashSize(std::string_view hash);
Result<Bytes> Hash(std::string_view hash, std::span<const uint8_t> data);
// Incremental hashing over several pieces (header checksum: binary header + JSON area).
Result<Bytes> HashParts(std::string_view hash, std::initializer_list<std::span<const uint8_t>> parts);

// A hash computed over a stream given piece by piece (a device read in pieces, so that no
// buffer of the whole exists). Not thread-safe; one per stream. Final ends it: further calls fail.
class Hasher {
 public:
  static Result<Hasher> Create(std::string_view hash);
  Hasher(Hasher&&) noexcept;
  Hasher& operator=(Hasher&&) noexcept;
  ~Hasher();
  Status Update(std::span<const uint8_t> data);
  Result<Bytes> Final();

 private:
  Hasher();
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Hashes each `block`-byte piece of `data` into consecutive digests in `out` (data.size() a
// multiple of block; out.size() = pieces * HashSize). One digest context for all pieces.
Status HashBlocks(std::string_view hash, std::span<const uint8_t> data, size_t block,
                  std::span<uint8_t> out);

Status Pbkdf2(std::string_view hash, std::span<const uint8_t> password,
              std::span<const uint8_t> salt, uint32_t iterations, std::span<uint8_t> out);

enum class Argon2Type { kArgon2i, kArgon2id };
// memory_kib is in KiB as in LUKS2's "memory" field.
Status Argon2(Argon2Type type, std::span<const uint8_t> password, std::span<const uint8_t> salt,
              uint32_t time_cost, uint32_t memory_kib, uint32_t parallel, std::span<uint8_t> out);

// A data cipher as dm-crypt names it ("aes-xts-plain64"). Encrypts whole sectors; the IV of the
// sector at byte `pos` of a run starting at iv_sector is iv_sector + pos/512 (plain64 counts in
// 512-byte units even for 4096-byte sectors, as LUKS2 does).
// Thread-safety: one instance per thread (holds an OpenSSL context); Clone() for more threads.
class SectorCipher {
 public:
  // Supported: aes-xts-plain64 and aes-xts-plain (key 32 or 64 bytes), aes-cbc-essiv:sha256 and
  // aes-cbc-plain64 (16/24/32 bytes). Anything else is kUnsupported, naming the spec.
  static Result<std::unique_ptr<SectorCipher>> Create(std::string_view spec,
                                                      std::span<const uint8_t> key);
  virtual ~SectorCipher() = default;
  // In place. data.size() must be a multiple of sector_size; sector_size is 512..4096, a power of 2.
  virtual Status Encrypt(std::span<uint8_t> data, uint64_t iv_sector, uint32_t sector_size) = 0;
  virtual Status Decrypt(std::span<uint8_t> data, uint64_t iv_sector, uint32_t sector_size) = 0;
  virtual Result<std::unique_ptr<SectorCipher>> Clone() const = 0;
};

// Checks that `spec` is a cipher SectorCipher supports with a key of key_bytes.
Status CheckCipherSpec(std::string_view spec, size_t key_bytes);

// LUKS anti-forensic splitter (LUKS1 spec, "af" in LUKS2 keyslots): split key material into
// `stripes` diffused stripes and merge it back. hash is the AF hash ("sha256" ...).
Status AfSplit(std::span<const uint8_t> key, uint32_t stripes, std::string_view hash,
               std::span<uint8_t> out);
Status AfMerge(std::span<const uint8_t> split, uint32_t stripes, std::string_view hash,
               std::span<uint8_t> key_out);

}  // namespace ds
