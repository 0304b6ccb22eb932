// The vault's API: Azure Key Vault's REST subset for secrets and keys (paths, JSON shapes,
// api-version, error bodies), with bearer-token authorization and an audit log. Independent of
// HTTP and TLS (server.h carries requests here), so it is testable without sockets.
// Threading: Handle() may be called from many threads at once.
#pragma once

#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
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
  std::string host;           // the Host header: object ids are "https://<host>/..."
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
  void Record(const std::string& line);

 private:
  explicit AuditLog(int fd) : fd_(fd) {}
  int fd_;
  std::mutex mu_;
};

class VaultService {
 public:
  // `store` and `master` must match (OpenVault checks that); `audit` may be null (no audit log).
  VaultService(std::unique_ptr<VaultStore> store, MasterKey master, std::unique_ptr<AuditLog> audit);
  ApiResponse Handle(const ApiRequest& req);

 private:
  struct Call;
  ApiResponse Dispatch(Call& c);
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

  std::unique_ptr<VaultStore> store_;
  MasterKey master_;
  std::unique_ptr<AuditLog> audit_;
  // Unsealed, parsed keys by "name/version": parsing an RSA key costs more than using it.
  std::shared_mutex cache_mu_;
  std::unordered_map<std::string, std::shared_ptr<KeyMaterial>> key_cache_;
};

}  // namespace ds::vault
