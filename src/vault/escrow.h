// Key escrow as Azure Disk Encryption does it, verified before the first data write: the volume
// passphrase is stored as a vault secret (optionally wrapped by a key-encryption key), read back,
// unwrapped and checked against the volume's own keyslot digest by the caller's `verify`.
// Secret layout (ADE's): value = base64 of the passphrase or of its wrapped form; contentType
// "BEK" or "Wrapped BEK"; tags DiskEncryptionKeyFileName, DiskEncryptionKeyEncryptionAlgorithm,
// DiskEncryptionKeyEncryptionKeyURL (wrapped only), MachineName, plus LuksUuid.
#pragma once

#include <functional>
#include <string>

#include "util/secure_buffer.h"
#include "util/status.h"
#include "vault/client.h"

namespace ds::vault {

inline constexpr const char* kContentTypeBek = "BEK";
inline constexpr const char* kContentTypeWrappedBek = "Wrapped BEK";
inline constexpr const char* kTagKeyFileName = "DiskEncryptionKeyFileName";
inline constexpr const char* kTagAlgorithm = "DiskEncryptionKeyEncryptionAlgorithm";
inline constexpr const char* kTagKekUrl = "DiskEncryptionKeyEncryptionKeyURL";
inline constexpr const char* kTagMachineName = "MachineName";
inline constexpr const char* kTagLuksUuid = "LuksUuid";

struct EscrowRequest {
  std::string secret_name;  // empty: DefaultSecretName(luks_uuid)
  std::string luks_uuid;    // required: tags the secret, names it by default
  std::string kek;          // key-encryption key name; empty: the passphrase is stored unwrapped
  std::string kek_version;  // empty: the KEK's newest version (the kid used is recorded)
  // RSA-OAEP (ADE's default) or RSA-OAEP-256 for RSA KEKs; A256KW for oct KEKs (the passphrase
  // length must then be a multiple of 8, at least 16: GeneratePassphrase makes such).
  std::string kek_alg = "RSA-OAEP";
  std::string machine_name;  // empty: this host's name
  std::string key_file_name = "LinuxPassPhraseFileName";  // ADE's value for Linux volumes
};

struct EscrowRecord {
  std::string secret_id;  // https://vault/secrets/<name>/<version>
  std::string secret_name, secret_version;
  std::string content_type;
  std::string kek_kid;  // empty when not wrapped
};

// "diskseal-<luks uuid>": a valid vault secret name derived from the volume.
std::string DefaultSecretName(const std::string& luks_uuid);
// A random passphrase of 48 base64url characters (288 bits); its length suits A256KW too.
Result<SecureBuffer> GeneratePassphrase();

// Stores `passphrase`, reads that exact version back, unwraps it and requires it to equal
// `passphrase` and to pass `verify` (the caller checks it against the LUKS2 keyslot and digest).
// Any difference is an error (kCorrupt for a mismatch), and the stored version is then disabled
// so a later fetch of the newest version never returns it. Call before writing any data.
Result<EscrowRecord> EscrowAndVerify(VaultClient& client, const SecureBuffer& passphrase,
                                     const EscrowRequest& req,
                                     const std::function<Status(const SecureBuffer&)>& verify);

// Reads an escrowed passphrase (version empty: the newest enabled version, skipping versions
// EscrowAndVerify disabled) and unwraps it when its contentType is "Wrapped BEK", using the KEK
// URL and algorithm recorded in its tags.
Result<SecureBuffer> FetchEscrowedPassphrase(VaultClient& client, const std::string& secret_name,
                                             const std::string& version = "");

// The plaintext of an escrowed secret: base64-decoded, unwrapped with the KEK its tags name when
// its contentType is "Wrapped BEK".
Result<SecureBuffer> UnwrapEscrowed(VaultClient& client, const SecretBundle& s);

}  // namespace ds::vault
