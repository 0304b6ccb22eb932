// A client for the Key Vault REST subset: diskseal's own vault or Azure Key Vault (given an Entra
// ID access token for https://vault.azure.net). libcurl with OpenSSL: honours https_proxy /
// no_proxy from the environment as curl does, and a CA file for a private CA.
// Errors: kNetwork for DNS/connect/TLS/timeout failures (the message names the stage), kPermission-
// Denied for 401/403 (with the server's reason, which names the missing permission), kNotFound for
// 404, kInvalidArgument for 400, kBusy for 409.
// Threading: one VaultClient per thread (it owns one libcurl handle and reuses its connection).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "util/bytes.h"
#include "util/secure_buffer.h"
#include "util/status.h"

namespace ds::vault {

struct VaultClientOptions {
  std::string url;         // https://host[:port] (the vault's base URL; http:// is refused)
  std::string token_file;  // file holding the bearer token (ours, or an Entra ID access token)
  std::string token_env;   // or: the name of an environment variable holding it
  std::string ca_file;     // PEM CA certificates to trust; empty: the system's store
  long connect_timeout_ms = 10000;
  long timeout_ms = 30000;
  std::string api_version = "7.4";
};

using Tags = std::map<std::string, std::string>;

struct SecretBundle {
  std::string id, name, version;
  SecureBuffer value;
  std::string content_type;
  Tags tags;
  bool enabled = true;
  int64_t created = 0, updated = 0;
};

struct KeyInfo {
  std::string kid, name, version, kty;
  std::vector<std::string> key_ops;
  Bytes n, e;  // RSA public part
};

struct HttpReply {
  long status = 0;
  std::string body;
  std::string www_authenticate;
};

class VaultClient {
 public:
  // Reads the token now (from the file or the environment variable) into locked memory.
  static Result<std::unique_ptr<VaultClient>> Create(Env& env, const VaultClientOptions& opts);
  ~VaultClient();
  VaultClient(const VaultClient&) = delete;
  VaultClient& operator=(const VaultClient&) = delete;

  Result<SecretBundle> SetSecret(const std::string& name, std::span<const uint8_t> value,
                                 const std::string& content_type, const Tags& tags);
  // version empty: the newest.
  Result<SecretBundle> GetSecret(const std::string& name, const std::string& version = "");
  // Every version (follows nextLink), newest first; values are not included.
  Result<std::vector<SecretBundle>> ListSecretVersions(const std::string& name);
  Status SetSecretEnabled(const std::string& name, const std::string& version, bool enabled);

  Result<KeyInfo> CreateKey(const std::string& name, const std::string& kty, int size);
  Result<KeyInfo> GetKey(const std::string& name, const std::string& version = "");
  // Returns the kid of the key version that wrapped (name/version) and the wrapped bytes.
  Result<std::pair<std::string, Bytes>> WrapKey(const std::string& name, const std::string& version,
                                                const std::string& alg,
                                                std::span<const uint8_t> plaintext);
  Result<SecureBuffer> UnwrapKey(const std::string& name, const std::string& version,
                                 const std::string& alg, std::span<const uint8_t> wrapped);

  // Raw call: `path_query` is "/secrets/x?maxresults=3" (api-version is appended). Transport
  // failures are errors; any HTTP status is returned as is. For tests and scripts.
  Result<HttpReply> Call(const std::string& method, const std::string& path_query,
                         const std::string& body);
  const std::string& base_url() const { return base_; }

  // Where the last Call() failed below HTTP, for diagnosis (doctor); empty stage after a call
  // that got an HTTP answer. Stages in connection order: "url", "proxy", "dns", "tcp", "tls",
  // "tls-verify", "timeout", "http" (the connection dropped after TLS).
  struct TransportFailure {
    std::string stage;
    std::string detail;  // libcurl's words
  };
  const TransportFailure& last_transport_failure() const { return last_failure_; }

 private:
  VaultClient() = default;
  // Call() plus: a non-2xx status becomes the typed error described at the top.
  Result<HttpReply> CallOk(const std::string& method, const std::string& path_query,
                           const std::string& body, const std::string& what);
  void* curl_ = nullptr;
  std::string base_;
  VaultClientOptions opts_;
  SecureBuffer auth_header_;  // "Authorization: Bearer <token>\0"
  TransportFailure last_failure_;
};

// The proxy libcurl will use for `url` from the environment (https_proxy, HTTPS_PROXY,
// all_proxy, ALL_PROXY, minus no_proxy/NO_PROXY host and domain matches, "*" for all), or "".
// For messages: curl itself applies the same variables.
std::string ProxyFor(const std::string& url);

// Splits an object id/kid URL "https://host/keys/name/version" into name and version.
Result<std::pair<std::string, std::string>> ParseObjectId(const std::string& id, const std::string& area);

}  // namespace ds::vault
