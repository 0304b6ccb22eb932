#include "vault/server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <httplib.h>

#include <algorithm>
#include <openssl/ssl.h>

#include <nlohmann/json.hpp>

#include "util/bytes.h"
#include "vault/service.h"
#include "vault/vault_dir.h"

namespace ds::vault {

struct VaultServer::Impl {
  std::unique_ptr<VaultService> service;
  std::unique_ptr<httplib::SSLServer> http;
};

namespace {

Result<std::pair<std::string, int>> ParseListen(const std::string& s) {
  std::string host = "127.0.0.1", port = s;
  if (!s.empty() && s[0] == '[') {
    size_t close = s.find("]:");
    if (close == std::string::npos) return InvalidArgument("--listen '" + s + "': use [addr]:port");
    host = s.substr(1, close - 1);
    port = s.substr(close + 2);
  } else if (size_t colon = s.rfind(':'); colon != std::string::npos) {
    host = s.substr(0, colon);
    port = s.substr(colon + 1);
  }
  auto p = ParseU64(port);
  if (host.empty() || !p || *p > 65535) return InvalidArgument("--listen '" + s + "': use host:port");
  return std::make_pair(host, int(*p));
}

void ToApi(const httplib::Request& in, ApiRequest& out) {
  out.method = in.method;
  out.path = in.path;
  out.query.insert(in.params.begin(), in.params.end());
  out.authorization = in.get_header_value("Authorization");
  out.host = in.get_header_value("Host");
  out.body = in.body;
  out.remote = in.remote_addr;
}

void FromApi(const ApiResponse& in, httplib::Response& out) {
  out.status = in.status;
  if (!in.www_authenticate.empty()) out.set_header("WWW-Authenticate", in.www_authenticate);
  if (!in.body.empty()) out.set_content(in.body, "application/json; charset=utf-8");
}

std::string ErrorBody(const std::string& code, const std::string& message) {
  return nlohmann::json{{"error", {{"code", code}, {"message", message}}}}.dump();
}

}  // namespace

VaultServer::~VaultServer() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Result<std::unique_ptr<VaultServer>> VaultServer::Start(Env& env, const ServerOptions& opts,
                                                        std::ostream& log) {
  if (opts.dir.empty()) return InvalidArgument("the vault needs a data directory (--dir)");
  DS_ASSIGN_OR_RETURN(auto hp, ParseListen(opts.listen));
  std::unique_ptr<VaultServer> srv(new VaultServer());
  srv->impl_ = std::make_unique<Impl>();
  VaultPaths paths(opts.dir, opts.master_key_file);

  // One server per directory, decided before anything in it is touched: the service caches
  // objects on the premise that it is their only writer.
  if (::mkdir(opts.dir.c_str(), 0700) != 0 && errno != EEXIST) return PosixError(opts.dir, errno);
  srv->lock_fd_ = ::open(paths.lock().c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (srv->lock_fd_ < 0) return PosixError(paths.lock(), errno);
  if (::flock(srv->lock_fd_, LOCK_EX | LOCK_NB) != 0)
    return Busy(opts.dir + ": another vault server is already serving this directory");
  DS_ASSIGN_OR_RETURN(OpenedVault vault, OpenVault(env, paths, true));

  std::string cert = opts.cert_file, key = opts.key_file;
  if (cert.empty() != key.empty()) return InvalidArgument("--cert and --key go together");
  if (cert.empty()) {
    TlsFiles tls = paths.tls();
    cert = tls.server_cert;
    key = tls.server_key;
    if (!env.Exists(cert) || !env.Exists(key)) {
      std::vector<std::string> names = opts.hostnames;
      for (const char* d : {"localhost", "127.0.0.1", "::1"}) names.push_back(d);
      if (hp.first != "0.0.0.0" && hp.first != "::") names.push_back(hp.first);
      std::sort(names.begin(), names.end());
      names.erase(std::unique(names.begin(), names.end()), names.end());
      DS_RETURN_IF_ERROR(CreateTlsIdentity(env, tls, names));
      log << "vault: created a CA and server certificate; clients trust the vault with --vault-ca "
          << tls.ca_cert << "\n";
    }
  }

  DS_ASSIGN_OR_RETURN(auto audit, AuditLog::Open(paths.audit_log()));
  DS_RETURN_IF_ERROR(BeginServing(env, paths, *audit));  // audits an earlier unclean stop
  // A start that fails from here on is not a crash: take the marker back.
  struct MarkerGuard {
    const VaultPaths* paths;
    ~MarkerGuard() { if (paths) EndServing(*paths); }
  } marker{&paths};
  srv->impl_->service = std::make_unique<VaultService>(
      std::move(vault.store), std::move(vault.master), std::move(audit), paths.token_stamp());

  std::string tls_error;
  auto http = std::make_unique<httplib::SSLServer>([&](SSL_CTX& ctx) {
    SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(&ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(&ctx, cert.c_str()) != 1) {
      tls_error = cert + ": cannot load the certificate chain";
      return false;
    }
    if (SSL_CTX_use_PrivateKey_file(&ctx, key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(&ctx) != 1) {
      tls_error = key + ": cannot load the private key or it does not match " + cert;
      return false;
    }
    return true;
  });
  if (!http->is_valid())
    return InvalidArgument(tls_error.empty() ? "TLS setup failed" : tls_error);

  size_t threads = std::max<size_t>(opts.threads, 4);
  http->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  http->set_payload_max_length(opts.max_body);
  http->set_keep_alive_max_count(100000);
  http->set_keep_alive_timeout(30);
  http->set_read_timeout(10);
  http->set_write_timeout(10);
  http->set_tcp_nodelay(true);

  VaultService* service = srv->impl_->service.get();
  auto handler = [service](const httplib::Request& req, httplib::Response& res) {
    ApiRequest a;
    ToApi(req, a);
    FromApi(service->Handle(a), res);
  };
  http->Get(".*", handler);
  http->Put(".*", httplib::Server::Handler(handler));
  http->Post(".*", httplib::Server::Handler(handler));
  http->Patch(".*", httplib::Server::Handler(handler));
  http->Delete(".*", httplib::Server::Handler(handler));
  // Whatever the library answers by itself (oversized body 413, bad request line 400, an
  // unsupported method 404/405) still gets an error body in the API's shape.
  http->set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    std::string code = res.status == 413 ? "RequestEntityTooLarge"
                       : res.status == 404 ? "NotFound"
                       : res.status == 405 ? "MethodNotAllowed"
                                           : "BadRequest";
    std::string what = res.status == 413 ? "the request body is larger than the vault accepts"
                                         : "the request was refused by the HTTP layer";
    res.set_content(ErrorBody(code, what + " (HTTP " + std::to_string(res.status) + ")"),
                    "application/json; charset=utf-8");
  });
  http->set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr) {
    res.status = 500;
    res.set_content(ErrorBody("InternalServerError", "the vault failed handling this request"),
                    "application/json; charset=utf-8");
  });

  int port = hp.second;
  if (port == 0) {
    port = http->bind_to_any_port(hp.first);
    if (port < 0) return NetworkError("cannot listen on " + opts.listen);
  } else if (!http->bind_to_port(hp.first, port)) {
    return NetworkError("cannot listen on " + opts.listen + " (address in use or not local)");
  }
  srv->port_ = port;
  srv->impl_->http = std::move(http);
  if (!opts.port_file.empty())
    DS_RETURN_IF_ERROR(env.WriteFileAtomic(opts.port_file, std::to_string(port) + "\n", 0644));
  std::string shown = hp.first.find(':') != std::string::npos ? "[" + hp.first + "]" : hp.first;
  marker.paths = nullptr;  // serving: the CLI removes the marker after a clean stop
  log << "vault: listening on https://" << shown << ":" << port << "\n";
  log.flush();
  return srv;
}

Status VaultServer::Run() {
  if (!impl_->http->listen_after_bind()) return NetworkError("the vault's listener failed");
  return Status::Ok();
}

void VaultServer::Stop() { impl_->http->stop(); }

}  // namespace ds::vault
