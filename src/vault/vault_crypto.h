// The vault's own cryptography, all OpenSSL 3: the master key that seals every secret value and
// private key at rest, the key-encryption operations of the API (RSA-OAEP, RSA-OAEP-256, A256KW),
// RSA key generation, and the self-signed CA + server certificate made on first start.
// Thread-safety: MasterKey and KeyMaterial are immutable after creation and safe to share between
// threads; every function here is thread-safe.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/block_device.h"
#include "util/bytes.h"
#include "util/secure_buffer.h"
#include "util/status.h"

struct evp_pkey_st;  // OpenSSL's EVP_PKEY, kept out of this header

namespace ds::vault {

// 32 random bytes in a 0600 file. Sealing is AES-256-GCM with a random nonce, and the caller's
// `context` (kind/name/version) as associated data, so a sealed value moved to another row of the
// database no longer opens.
class MasterKey {
 public:
  // Loads `path`; if it does not exist and `create` is set, makes a new key there (mode 0600).
  // Refuses a key file readable by group or others.
  static Result<MasterKey> LoadOrCreate(Env& env, const std::string& path, bool create);
  explicit MasterKey(SecureBuffer key) : key_(std::make_shared<SecureBuffer>(std::move(key))) {}

  Result<Bytes> Seal(std::span<const uint8_t> plaintext, std::string_view context) const;
  // kCorrupt when the tag does not verify (wrong master key or altered row).
  Result<SecureBuffer> Open(std::span<const uint8_t> sealed, std::string_view context) const;
  // Open() into caller-provided (locked) memory; returns the plaintext length. For hot paths: a
  // SecureBuffer per call costs an mmap/mlock/munmap, which dominates a GET.
  Result<size_t> OpenInto(std::span<const uint8_t> sealed, std::string_view context,
                          std::span<uint8_t> out) const;
  static size_t PlainSize(size_t sealed_size);

 private:
  std::shared_ptr<const SecureBuffer> key_;
};

// Wrapping algorithms of the Key Vault API.
enum class WrapAlg { kRsaOaep, kRsaOaep256, kA256KW };
Result<WrapAlg> ParseWrapAlg(std::string_view name);  // kUnsupported names the algorithm
const char* WrapAlgName(WrapAlg a);

// A key usable for wrap/unwrap: an RSA key pair or a 256-bit symmetric ("oct") key.
class KeyMaterial {
 public:
  ~KeyMaterial();
  KeyMaterial(const KeyMaterial&) = delete;
  KeyMaterial& operator=(const KeyMaterial&) = delete;

  static Result<std::shared_ptr<KeyMaterial>> GenerateRsa(int bits);
  static Result<std::shared_ptr<KeyMaterial>> GenerateOct(int bits);
  // From Serialize()'s output (PKCS#8 DER for RSA, raw bytes for oct).
  static Result<std::shared_ptr<KeyMaterial>> Deserialize(std::string_view kty,
                                                          std::span<const uint8_t> data);
  Result<SecureBuffer> Serialize() const;

  bool is_rsa() const { return pkey_ != nullptr; }
  int bits() const;
  // RSA public modulus and exponent, big-endian unsigned (JWK "n", "e").
  Bytes modulus() const;
  Bytes exponent() const;

  // kInvalidArgument when the algorithm does not fit the key or the input has the wrong size.
  Result<Bytes> Wrap(WrapAlg alg, std::span<const uint8_t> plaintext) const;
  Result<SecureBuffer> Unwrap(WrapAlg alg, std::span<const uint8_t> wrapped) const;
  // Unwrap() into caller-provided (locked) memory of at least wrapped.size() bytes; returns the
  // plaintext length.
  Result<size_t> UnwrapInto(WrapAlg alg, std::span<const uint8_t> wrapped,
                            std::span<uint8_t> out) const;

 private:
  KeyMaterial() = default;
  ::evp_pkey_st* pkey_ = nullptr;  // RSA
  SecureBuffer oct_;                    // oct
};

// Wraps with only the public half of an RSA key (n, e): what a client can do offline.
Result<Bytes> RsaPublicWrap(std::span<const uint8_t> n, std::span<const uint8_t> e, WrapAlg alg,
                            std::span<const uint8_t> plaintext);

// The files of the vault's TLS identity in its data directory.
struct TlsFiles {
  std::string ca_cert, ca_key, server_cert, server_key;
};
// Creates a P-256 CA and a server certificate signed by it, valid for `hostnames` (DNS names or
// IP addresses, put in subjectAltName) for 10 years; keys are written 0600.
Status CreateTlsIdentity(Env& env, const TlsFiles& files, const std::vector<std::string>& hostnames);

}  // namespace ds::vault
