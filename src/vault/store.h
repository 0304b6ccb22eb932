// Where the vault keeps its objects (secret and key versions), soft-deleted names, access tokens
// and a little metadata. An interface so the embedded SQLite store can later be joined by an etcd
// one (docs/architecture.md, "vault"). The store never sees a plaintext secret or private key:
// values arrive sealed under the master key (vault_crypto.h).
// Threading: every method is safe to call from many threads at once. Durability: a method that
// changes state returns ok only once the change survives a crash or power cut.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "util/bytes.h"
#include "util/status.h"

namespace ds::vault {

enum class Kind { kSecret, kKey };
inline const char* KindName(Kind k) { return k == Kind::kSecret ? "secrets" : "keys"; }

// One version of a secret or key. `seq` orders versions of a name (assigned by the store).
struct ObjectVersion {
  Kind kind = Kind::kSecret;
  std::string name, version;
  int64_t seq = 0;
  Bytes sealed;                  // secret value or private key, sealed under the master key
  std::string content_type;      // secrets only
  std::string tags_json = "{}";  // JSON object of string tags
  std::string meta_json = "{}";  // keys: {"kty","key_size","key_ops","n","e"}
  bool enabled = true;
  std::optional<int64_t> nbf, exp;  // Unix seconds
  int64_t created = 0, updated = 0;
};

struct DeletedName {
  std::string name;
  int64_t deleted_date = 0, scheduled_purge_date = 0;
};

struct TokenRecord {
  std::string name;
  std::string hash_hex;            // SHA-256 of the token; the token itself is never stored
  std::vector<std::string> perms;  // "secrets:get", ...
  int64_t created = 0;
  bool revoked = false;
  // The machine this token acts for: it reaches only objects that machine owns (see
  // VaultStore::AddVersion). Empty: an operator token, which reaches every object.
  std::string machine;
  int64_t expires = 0;  // Unix seconds after which the token is refused; 0: never
};

class VaultStore {
 public:
  virtual ~VaultStore() = default;

  // Adds a version (v.seq is ignored and assigned). kBusy if the name is soft-deleted.
  // Ownership, decided in the same transaction: the first version of a name records `owner` (a
  // machine name, or "" for an operator) as the name's owner for good (until purge). A non-empty
  // `owner` may add versions only to a name it owns: kPermissionDenied otherwise (names that
  // existed before owners were recorded belong to the operators).
  virtual Status AddVersion(const ObjectVersion& v, const std::string& owner = "") = 0;
  // Who owns a name (live or soft-deleted): the machine, "" for the operators; nullopt when the
  // name does not exist at all.
  virtual Result<std::optional<std::string>> GetOwner(Kind kind, const std::string& name) = 0;
  // `version` empty: the newest. kNotFound if absent, or if the name is soft-deleted and
  // `include_deleted` is false.
  virtual Result<ObjectVersion> Get(Kind kind, const std::string& name, const std::string& version,
                                    bool include_deleted) = 0;
  // Newest first. `skip` versions are skipped; at most `max` returned.
  virtual Result<std::vector<ObjectVersion>> ListVersions(Kind kind, const std::string& name,
                                                          size_t skip, size_t max) = 0;
  // The newest version of each live name, ordered by name.
  virtual Result<std::vector<ObjectVersion>> ListNames(Kind kind, size_t skip, size_t max) = 0;
  // Replaces content_type, tags_json, enabled, nbf, exp and updated of an existing version.
  virtual Status UpdateVersion(const ObjectVersion& v) = 0;

  // Soft delete: the name disappears from Get/List until Recover or Purge.
  virtual Result<DeletedName> SoftDelete(Kind kind, const std::string& name, int64_t now,
                                         int64_t purge_after_seconds) = 0;
  virtual Result<std::vector<DeletedName>> ListDeleted(Kind kind, size_t skip, size_t max) = 0;
  virtual Result<DeletedName> GetDeleted(Kind kind, const std::string& name) = 0;
  virtual Status Recover(Kind kind, const std::string& name) = 0;
  // Removes a soft-deleted name and all its versions for good.
  virtual Status Purge(Kind kind, const std::string& name) = 0;

  virtual Status AddToken(const TokenRecord& t) = 0;  // kBusy if the name is taken
  virtual Result<TokenRecord> FindTokenByHash(const std::string& hash_hex) = 0;
  virtual Status RevokeToken(const std::string& name) = 0;
  virtual Result<std::vector<TokenRecord>> ListTokens() = 0;

  virtual Result<Bytes> GetMeta(const std::string& key) = 0;  // kNotFound when absent
  virtual Status PutMeta(const std::string& key, std::span<const uint8_t> value) = 0;
  // Stores `value` under `key` unless the key is already there; returns what is stored (the
  // earlier value when there was one). Atomic: of two racing claims, one wins for both.
  virtual Result<Bytes> ClaimMeta(const std::string& key, std::span<const uint8_t> value) = 0;

  // A consistent copy of the whole store in one file, taken while the store is in use.
  virtual Status Backup(const std::string& path) = 0;
};

// The embedded store: one SQLite database file (WAL, synchronous=FULL). Creates it if missing.
// Runs SQLite's quick_check on open: a damaged database is refused (kCorrupt) before it serves.
Result<std::unique_ptr<VaultStore>> OpenSqliteStore(const std::string& path);

}  // namespace ds::vault
