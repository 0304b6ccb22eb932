// The vault's HTTPS front: an event-driven HTTP/1.1 server (Boost.Beast on Asio, TLS by OpenSSL)
// carrying requests to VaultService. TLS only: there is no plain-HTTP listener. On first start
// without a certificate it makes a CA and a server certificate in the data directory
// (vault_crypto.h, CreateTlsIdentity).
// Hostile clients are bounded before anything is buffered (docs/architecture.md, "The vault's HTTP
// front"): request line, header bytes and count, the body in every transfer coding, connections in
// all and per client address, and a total deadline for each TLS handshake and each request that a
// client trickling bytes cannot extend. Idle connections cost a socket and buffers, no thread.
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
  size_t threads = 16;        // workers running service calls (the connections need none)
  size_t io_threads = 0;      // threads driving connections and TLS; 0: one per core
  size_t max_body = 1 << 20;  // request body in any transfer coding (413 beyond)
  size_t max_request_line = 8 << 10;   // 414 beyond
  size_t max_header_bytes = 16 << 10;  // request line + header fields (431 beyond)
  size_t max_headers = 100;            // header fields (431 beyond)
  size_t max_connections = 1024;       // open connections in all (lowered to fit RLIMIT_NOFILE)
  size_t max_client_connections = 128;  // open connections from one client IP address
  // Seconds. handshake/request: total deadlines, from accept to the end of the TLS handshake and
  // from a request's first byte to its last; idle: a keep-alive connection waiting for a request.
  double handshake_timeout = 10, request_timeout = 10, idle_timeout = 30;
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

  struct Impl;  // defined in server.cc (public so its connection sessions can name it)

 private:
  VaultServer() = default;
  std::unique_ptr<Impl> impl_;
  int port_ = 0;
  int lock_fd_ = -1;
};

}  // namespace ds::vault
