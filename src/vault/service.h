// The vault's API: Azure Key Vault's REST subset for secrets and keys (paths, JSON shapes,
// api-version, error bodies), with bearer-token authorization and an audit log. Independent of
// HTTP and TLS (server.h carries requests here), so it is testable without sockets.
// Threading: Handle() may be called from many threads at once.
#pragma once

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include "vault/store.h"
#include "vault/vault_crypto.h"

namespace ds::vault {

struct ApiRequest {
  std::string method;  // "GET", "PUT", ...
  std::string path;    // "/secrets/name/version", no query
  std::multimap<std::string, std::string> query;
  std::string authorization;  // the Authorization header
  std::string host;           // the Host header: object ids are "https://<host>/..." (validated)
  std::string body;
  std::string remote;  // peer address, for the audit log
};

struct ApiResponse {
  int status = 200;
  std::string body;              // JSON (may be empty for 204)
  std::string www_authenticate;  // set on 401
};

// JSON lines, one per request: time, remote, token name, operation, object, HTTP status, error
// code. Never a request or response body, so never a secret value.
// Threading: Record() is serialized internally; each line is one write(2) to an O_APPEND file.
class AuditLog {
 public:
  static Result<std::unique_ptr<AuditLog>> Open(const std::string& path);
  ~AuditLog();
  // An error (full disk, I/O error) when the whole line was not written: the caller must not
  // hand out what it could not audit (VaultService::Handle answers 503 instead).
  Status Record(const std::string& line);

 private:
  explicit AuditLog(int fd) : fd_(fd) {}
  int fd_;
  std::mutex mu_;
};

class VaultService {
 public:
  // `store` and `master` must match (OpenVault checks that); `audit` may be null (no audit log).
  // Preconditions: this service is the only writer of objects in `store` (the server's directory
  // lock ensures it), so it may cache them. Tokens may change from other processes: they are
  // cached only when `token_stamp_file` is given, and every cached token is dropped when that
  // file changes (`vault token revoke` rewrites it after revoking).
  VaultService(std::unique_ptr<VaultStore> store, MasterKey master, std::unique_ptr<AuditLog> audit,
               std::string token_stamp_file = "");
  // Every answer is audited first: when the audit line cannot be written the answer is replaced
  // by 503 (a write already committed stays committed, but nothing unaudited is handed out).
  ApiResponse Handle(const ApiRequest& req);

 private:
  struct Call;
  ApiResponse Dispatch(Call& c);
  // Object-level authorization of a machine-scoped token (operators pass): an error answer, or
  // nullopt to go on. See docs/architecture.md "vault", authorization.
  std::optional<ApiResponse> AuthorizeObject(Call& c);
  ApiResponse SetSecret(Call& c);
  ApiResponse GetSecret(Call& c);
  ApiResponse UpdateSecret(Call& c);
  ApiResponse ListVersions(Call& c, bool names_only);
  ApiResponse DeleteObject(Call& c);
  ApiResponse ListDeleted(Call& c);
  ApiResponse GetDeleted(Call& c);
  ApiResponse RecoverObject(Call& c);
  ApiResponse PurgeObject(Call& c);
  ApiResponse CreateKey(Call& c, bool rotate);
  ApiResponse GetKey(Call& c);
  ApiResponse WrapUnwrap(Call& c, bool wrap);
  Result<std::shared_ptr<KeyMaterial>> LoadKey(const ObjectVersion& v);
  // Get() of live objects through the cache; Invalidate() after every write of a name.
  Result<std::shared_ptr<const ObjectVersion>> CachedGet(Kind kind, const std::string& name,
                                                         const std::string& version);
  void Invalidate(Kind kind, const std::string& name);
  Result<TokenRecord> LookupToken(const std::string& hash_hex);

  std::unique_ptr<VaultStore> store_;
  MasterKey master_;
  std::unique_ptr<AuditLog> audit_;
  // Unsealed, parsed keys by "name/version": parsing an RSA key costs more than using it.
  std::shared_mutex cache_mu_;
  std::unordered_map<std::string, std::shared_ptr<KeyMaterial>> key_cache_;
  // Object versions by "kind/name" then by version ("" = newest). `generation_` counts writes, so
  // a reader that raced with a write does not insert what it read before the write.
  std::shared_mutex objects_mu_;
  uint64_t generation_ = 0;
  std::unordered_map<std::string,
                     std::unordered_map<std::string, std::shared_ptr<const ObjectVersion>>> objects_;
  // Tokens by hash, valid while the stamp file keeps the (inode, mtime) they were read under.
  std::string token_stamp_file_;
  std::shared_mutex tokens_mu_;
  std::pair<uint64_t, int64_t> token_stamp_{0, 0};
  std::unordered_map<std::string, TokenRecord> tokens_;
};

}  // namespace ds::vault
