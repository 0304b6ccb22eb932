// A vault's data directory and the things every vault command opens from it: the SQLite store,
// the master key (checked against the store, so a wrong key file is refused before anything is
// written), the audit log path and the TLS identity. Also the access tokens (hashed, revocable).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "io/block_device.h"
#include "vault/store.h"
#include "vault/vault_crypto.h"

namespace ds::vault {

struct VaultPaths {
  explicit VaultPaths(std::string d, std::string master_key = "")
      : dir(std::move(d)), master_key_file(master_key.empty() ? dir + "/master.key" : master_key) {}
  std::string dir;
  std::string master_key_file;
  std::string db() const { return dir + "/vault.db"; }
  std::string audit_log() const { return dir + "/audit.log"; }
  std::string lock() const { return dir + "/serve.lock"; }
  // Rewritten whenever tokens are revoked, so a running server drops the tokens it cached.
  std::string token_stamp() const { return dir + "/tokens.stamp"; }
  // Every revoked token's hash, one "hash name" a line, kept outside vault.db so that restoring
  // a backup taken before a revocation cannot bring the token back (RestoreVault re-applies it).
  std::string revoked_list() const { return dir + "/revoked.list"; }
  // Written once the directory holds a vault: from then on a missing vault.db is an error, not
  // a new empty vault.
  std::string initialized() const { return dir + "/initialized"; }
  // Present while a server runs; found at start, it means the last run did not stop cleanly.
  std::string running() const { return dir + "/serve.running"; }
  TlsFiles tls() const {
    return {dir + "/ca.pem", dir + "/ca.key", dir + "/server.pem", dir + "/server.key"};
  }
};

class AuditLog;

// The running marker (paths.running()), under the directory's serve lock. BeginServing audits
// {"event":"previous run ended without a clean stop"} when the marker is still there from an
// earlier run (a crash, kill -9, power loss), then writes it anew; EndServing removes it after a
// clean stop.
Status BeginServing(Env& env, const VaultPaths& paths, AuditLog& audit);
void EndServing(const VaultPaths& paths);

struct OpenedVault {
  std::unique_ptr<VaultStore> store;
  MasterKey master;
};

// Opens the vault in paths.dir. With `create`, makes the directory (0700), the master key and the
// database when missing, but only for a new vault: a vault.db without its master key file, or a
// directory that held a vault (paths.initialized(), or an older vault's master.key or audit.log)
// without vault.db, is refused (kNotFound naming the missing file) and nothing is written. With
// `create`, revocations in paths.revoked_list() missing from the database are re-applied.
// kPermissionDenied when the master key does not open this database; kCorrupt when the database
// fails SQLite's quick_check.
Result<OpenedVault> OpenVault(Env& env, const VaultPaths& paths, bool create);
// Checks that `master` is the key `store` was made with (or records it when the store is new).
Status CheckMasterKey(VaultStore& store, const MasterKey& master, bool record_if_new);

// Every permission a token can carry, "area:operation".
const std::vector<std::string>& AllPermissions();
// "secrets:get,keys:wrap" or "all"; kInvalidArgument names an unknown permission.
Result<std::vector<std::string>> ParsePermissions(std::string_view csv);
// SHA-256 of the token, hex: what the store keeps.
std::string HashToken(std::string_view token);
struct TokenOptions {
  // A machine name: the token reaches only objects that machine owns (first created with a token
  // of that machine). Empty: an operator token (every object).
  std::string machine;
  int64_t lifetime_seconds = 0;  // 0: never expires
};
// The `vault token create --expires` default: a token is refused 90 days after it was made.
constexpr int64_t kDefaultTokenLifetime = 90 * 86400;
// "90d", "12h", "30m", "3600s" (or plain seconds) -> seconds; "never" -> 0.
Result<int64_t> ParseLifetime(std::string_view s);
// Machine names as a token scope: 1-64 of [A-Za-z0-9._-] (hostnames fit).
bool ValidMachineName(std::string_view s);
// Makes a new random token for `name` with `perms`, stores its hash, returns the token (shown
// once). kBusy when the name is taken.
Result<std::string> CreateToken(VaultStore& store, const std::string& name,
                                const std::vector<std::string>& perms,
                                const TokenOptions& options = {});

// Revokes token `name`: records it in paths.revoked_list() first (so no restore undoes it), then
// in the database, then tells a running server (through paths.token_stamp()).
Status RevokeToken(Env& env, const VaultPaths& paths, VaultStore& store, const std::string& name);
// Marks revoked in `store` every token whose hash paths.revoked_list() holds; returns how many
// were not revoked there yet.
Result<size_t> ApplyRevocationList(Env& env, const VaultPaths& paths, VaultStore& store);

struct RestoreReport {
  size_t revocations_reapplied = 0;  // tokens revoked after the backup was taken
};
// Restores a backup made by `vault backup` into paths.dir (the server must be stopped): checks
// that the backup opens with this vault's master key, re-applies the revocation list to it, then
// replaces the database atomically.
Result<RestoreReport> RestoreVault(Env& env, const VaultPaths& paths, const std::string& backup_file);

}  // namespace ds::vault
