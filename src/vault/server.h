// The vault's HTTPS front: cpp-httplib's TLS server (OpenSSL) carrying requests to VaultService.
// TLS only: there is no plain-HTTP listener. On first start without a certificate it makes a CA
// and a server certificate in the data directory (vault_crypto.h, CreateTlsIdentity).
#pragma once

#include <atomic>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "io/block_device.h"
#include "util/status.h"

namespace ds::vault {

struct ServerOptions {
  std::string dir;              // data directory (created 0700 if missing)
  std::string master_key_file;  // default <dir>/master.key
  std::string listen = "127.0.0.1:8443";  // host:port; port 0 picks a free one
  std::string cert_file, key_file;         // default <dir>/server.pem, server.key (generated)
  std::vector<std::string> hostnames;      // names for a generated certificate
  size_t threads = 128;  // one per open connection (keep-alive): the most concurrent clients
  size_t max_body = 1 << 20;
  std::string port_file;  // if set, the bound port is written here once listening
};

class VaultServer {
 public:
  // Opens the vault (taking the directory's lock), binds the socket and returns: connections made
  // from now on wait in the backlog until Run(). `log` gets the human-facing start-up lines.
  static Result<std::unique_ptr<VaultServer>> Start(Env& env, const ServerOptions& opts,
                                                    std::ostream& log);
  ~VaultServer();
  int port() const { return port_; }
  // Serves until Stop(); returns ok after a Stop, an error if the listener failed.
  Status Run();
  // Thread-safe and async-signal-unsafe: call from a normal thread (the CLI's signal thread).
  void Stop();

 private:
  VaultServer() = default;
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  int lock_fd_ = -1;
};

}  // namespace ds::vault
