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
  TlsFiles tls() const {
    return {dir + "/ca.pem", dir + "/ca.key", dir + "/server.pem", dir + "/server.key"};
  }
};

struct OpenedVault {
  std::unique_ptr<VaultStore> store;
  MasterKey master;
};

// Opens the vault in paths.dir. With `create`, makes the directory (0700), the master key and the
// database when missing. kPermissionDenied when the master key does not open this database.
Result<OpenedVault> OpenVault(Env& env, const VaultPaths& paths, bool create);
// Checks that `master` is the key `store` was made with (or records it when the store is new).
Status CheckMasterKey(VaultStore& store, const MasterKey& master, bool record_if_new);

// Every permission a token can carry, "area:operation".
const std::vector<std::string>& AllPermissions();
// "secrets:get,keys:wrap" or "all"; kInvalidArgument names an unknown permission.
Result<std::vector<std::string>> ParsePermissions(std::string_view csv);
// SHA-256 of the token, hex: what the store keeps.
std::string HashToken(std::string_view token);
// Makes a new random token for `name` with `perms`, stores its hash, returns the token (shown
// once). kBusy when the name is taken.
Result<std::string> CreateToken(VaultStore& store, const std::string& name,
                                const std::vector<std::string>& perms);

// Revokes token `name` and tells a running server (through paths.token_stamp()).
Status RevokeToken(Env& env, const VaultPaths& paths, VaultStore& store, const std::string& name);

// Restores a backup made by `vault backup` into paths.dir (the server must be stopped): checks
// that the backup opens with this vault's master key, then replaces the database atomically.
Status RestoreVault(Env& env, const VaultPaths& paths, const std::string& backup_file);

}  // namespace ds::vault
