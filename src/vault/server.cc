#include "vault/server.h"

// GCC 12's -Wnull-dereference fires inside Asio's scheduler and shared_ptr code once inlined into
// this file (false positives in library code, reported at the library's lines); the rest of the
// project keeps the warning.
#pragma GCC diagnostic ignored "-Wnull-dereference"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include <boost/asio.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <openssl/ssl.h>

#include <nlohmann/json.hpp>

#include "util/bytes.h"
#include "vault/service.h"
#include "vault/vault_dir.h"

namespace ds::vault {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using boost::system::error_code;

namespace {

class Session;

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

std::string ErrorBody(const std::string& code, const std::string& message) {
  return nlohmann::json{{"error", {{"code", code}, {"message", message}}}}.dump();
}

int HexDigit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// %XX decoding (and '+' as a space in query strings); a malformed escape stays as it is.
std::string UrlDecode(std::string_view s, bool plus_is_space) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size() && HexDigit(s[i + 1]) >= 0 && HexDigit(s[i + 2]) >= 0) {
      out.push_back(char(HexDigit(s[i + 1]) * 16 + HexDigit(s[i + 2])));
      i += 2;
    } else if (plus_is_space && s[i] == '+') {
      out.push_back(' ');
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

asio::steady_timer::duration Seconds(double s) {
  return std::chrono::duration_cast<asio::steady_timer::duration>(std::chrono::duration<double>(s));
}

}  // namespace

// Everything the connections share. Member order matters: the io_context is destroyed before the
// TLS context and the counters its pending handlers' sessions refer to.
struct VaultServer::Impl {
  ServerOptions opts;
  std::unique_ptr<VaultService> service;
  std::mutex mu;  // guards open/per_client
  size_t open = 0;
  std::unordered_map<std::string, size_t> per_client;
  std::unique_ptr<asio::thread_pool> workers;
  asio::ssl::context tls{asio::ssl::context::tls_server};
  asio::io_context ioc;
  tcp::acceptor acceptor{ioc};
  asio::steady_timer accept_retry{ioc};
  std::ostream* log = nullptr;

  // Counts a new connection from `ip`; false (and nothing counted) when a limit is reached.
  bool Admit(const std::string& ip) {
    std::lock_guard lock(mu);
    size_t& n = per_client[ip];
    if (open >= opts.max_connections || n >= opts.max_client_connections) {
      if (n == 0) per_client.erase(ip);
      return false;
    }
    ++n;
    ++open;
    return true;
  }
  void Release(const std::string& ip) {
    std::lock_guard lock(mu);
    auto it = per_client.find(ip);
    if (it != per_client.end() && --it->second == 0) per_client.erase(it);
    --open;
  }
  void Accept();
};

namespace {

// One connection. All its handlers run on its strand (the socket's executor), so its state needs
// no lock; a service call runs on a worker and posts its answer back to that strand.
// Lifetime: owned by the shared_ptrs its pending operations hold.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(VaultServer::Impl& srv, tcp::socket sock, std::string ip)
      : srv_(srv), o_(srv.opts), stream_(std::move(sock), srv.tls), timer_(stream_.get_executor()),
        ip_(std::move(ip)), buffer_(std::max<size_t>(64 << 10, 2 * o_.max_header_bytes)) {}
  ~Session() { srv_.Release(ip_); }

  void Start() {
    Arm(Phase::kHandshake, o_.handshake_timeout);
    stream_.async_handshake(asio::ssl::stream_base::server,
                            [self = shared_from_this()](error_code ec) {
                              if (self->closed_) return;
                              if (ec) return self->Close();
                              self->Arm(Phase::kIdle, self->o_.idle_timeout);
                              self->ReadHeaderBytes();
                            });
  }

 private:
  enum class Phase { kHandshake, kIdle, kReading, kHandling, kWriting, kLinger };

  // Sets the one deadline: when it passes in `phase`, the connection ends (OnDeadline). The
  // deadline is set once per phase, not per byte, so trickling cannot extend it.
  // The timer is re-armed only when the new deadline is earlier than the one it waits for; a later
  // one is picked up when it fires (Expired). Most requests then cost no timer syscall.
  void Arm(Phase phase, double seconds) {
    phase_ = phase;
    deadline_ = std::chrono::steady_clock::now() + Seconds(seconds);
    if (!timer_waiting_ || deadline_ < timer_.expiry()) Wait();
  }
  void Disarm(Phase phase) {
    phase_ = phase;
    deadline_ = asio::steady_timer::time_point::max();  // a waiting timer just lapses
  }
  void Wait() {
    uint64_t gen = ++timer_gen_;
    timer_waiting_ = true;
    timer_.expires_at(deadline_);
    timer_.async_wait([self = shared_from_this(), gen](error_code ec) {
      if (gen != self->timer_gen_) return;  // replaced by a later Wait()
      self->timer_waiting_ = false;
      if (ec || self->closed_ || self->deadline_ == asio::steady_timer::time_point::max()) return;
      if (std::chrono::steady_clock::now() < self->deadline_) return self->Wait();
      self->OnDeadline();
    });
  }

  void OnDeadline() {
    if (phase_ == Phase::kReading && !writing_ && read_pending_) {
      // Part of a request came, not all of it in time: say so (the read stays pending; a TLS
      // stream allows one write beside it), then close.
      return Fail(408, "RequestTimeout", "the request did not arrive within the server's deadline");
    }
    Close();
  }

  void Close() {
    if (closed_) return;
    closed_ = true;
    ++timer_gen_;
    timer_.cancel();
    error_code ec;
    beast::get_lowest_layer(stream_).shutdown(tcp::socket::shutdown_both, ec);
    beast::get_lowest_layer(stream_).close(ec);
  }

  // --- reading a request head: our own bounded scan, before any parser builds anything ---

  void ReadHeaderBytes() {
    size_t room = buffer_.max_size() - buffer_.size();
    if (room == 0) return Fail(431, "RequestHeaderFieldsTooLarge", "the request head is too large");
    read_pending_ = true;
    stream_.async_read_some(buffer_.prepare(std::min<size_t>(room, 16 << 10)),
                            [self = shared_from_this()](error_code ec, size_t n) {
                              self->read_pending_ = false;
                              if (self->closed_) return;
                              if (ec) return self->Close();
                              self->buffer_.commit(n);
                              if (self->phase_ == Phase::kLinger) return self->Linger();
                              self->ScanHead();
                            });
  }

  // Finds the end of the request head in what has arrived, counting lines and bytes on the way.
  void ScanHead() {
    if (buffer_.size() == 0) return ReadHeaderBytes();
    if (phase_ == Phase::kIdle) Arm(Phase::kReading, o_.request_timeout);
    std::string_view d(static_cast<const char*>(buffer_.data().data()), buffer_.size());
    std::optional<size_t> head_end;
    for (;;) {
      size_t p = d.find("\r\n", scanned_);
      if (p == std::string_view::npos) {
        scanned_ = d.empty() ? 0 : d.size() - 1;
        break;
      }
      scanned_ = p + 2;
      if (lines_ == 0 && p > o_.max_request_line)
        return Fail(414, "RequestUriTooLong", "the request line is longer than the vault accepts");
      if (p == line_start_ && lines_ > 0) {
        head_end = p + 2;
        break;
      }
      ++lines_;
      line_start_ = p + 2;
      if (lines_ > o_.max_headers + 1)
        return Fail(431, "RequestHeaderFieldsTooLarge", "the request has too many header fields");
    }
    size_t seen = head_end ? *head_end : d.size();
    if (lines_ == 0 && seen > o_.max_request_line)
      return Fail(414, "RequestUriTooLong", "the request line is longer than the vault accepts");
    if (seen > o_.max_header_bytes)
      return Fail(431, "RequestHeaderFieldsTooLarge", "the request head is larger than the vault accepts");
    if (!head_end) return ReadHeaderBytes();
    scanned_ = lines_ = line_start_ = 0;

    // The head is complete and within bounds: let Beast parse it (from the buffer, no read).
    parser_.emplace();
    parser_->header_limit(uint32_t(o_.max_header_bytes + 1));
    parser_->body_limit(o_.max_body);
    read_pending_ = true;
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](error_code ec, size_t) {
                              self->read_pending_ = false;
                              if (self->closed_) return;
                              if (self->phase_ == Phase::kLinger) return ec ? self->Close() : self->Linger();
                              if (ec) return self->FailParse(ec);
                              self->OnHead();
                            });
  }

  void OnHead() {
    auto& m = parser_->get();
    bool has_body = parser_->content_length().value_or(0) > 0 || parser_->chunked();
    if (has_body && beast::iequals(m[http::field::expect], "100-continue")) {
      writing_ = true;
      static const char kContinue[] = "HTTP/1.1 100 Continue\r\n\r\n";
      return asio::async_write(stream_, asio::buffer(kContinue, sizeof kContinue - 1),
                               [self = shared_from_this()](error_code ec, size_t) {
                                 self->writing_ = false;
                                 if (self->closed_) return;
                                 if (ec) return self->Close();
                                 self->ReadBody();
                               });
    }
    ReadBody();
  }

  void ReadBody() {
    // The parser takes at most body_limit bytes of body whatever the coding (Content-Length,
    // chunked); a request without either has no body (RFC 9112 6.3), so nothing is read to EOF.
    read_pending_ = true;
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](error_code ec, size_t) {
      self->read_pending_ = false;
      if (self->closed_) return;
      if (self->phase_ == Phase::kLinger) return ec ? self->Close() : self->Linger();
      if (ec) return self->FailParse(ec);
      self->Dispatch();
    });
  }

  void FailParse(error_code ec) {
    if (ec == http::error::body_limit)
      return Fail(413, "RequestEntityTooLarge", "the request body is larger than the vault accepts");
    if (ec == http::error::header_limit || ec == http::error::buffer_overflow)
      return Fail(431, "RequestHeaderFieldsTooLarge", "the request head is larger than the vault accepts");
    if (ec.category() == http::make_error_code(http::error::bad_method).category() &&
        ec != http::error::end_of_stream && ec != http::error::partial_message)
      return Fail(400, "BadRequest", "the request is not valid HTTP/1.1 (" + ec.message() + ")");
    Close();  // the peer went away or the transport failed: nobody to answer
  }

  // --- the service call, on a worker ---

  void Dispatch() {
    Disarm(Phase::kHandling);
    auto& m = parser_->get();
    auto req = std::make_shared<ApiRequest>();
    req->method = std::string(m.method_string());
    std::string_view target = m.target();
    size_t q = target.find('?');
    req->path = UrlDecode(target.substr(0, q), false);
    if (q != std::string_view::npos) {
      std::string_view query = target.substr(q + 1);
      while (!query.empty()) {
        size_t amp = query.find('&');
        std::string_view kv = query.substr(0, amp);
        size_t eq = kv.find('=');
        if (!kv.empty())
          req->query.emplace(UrlDecode(kv.substr(0, eq), true),
                             eq == std::string_view::npos ? "" : UrlDecode(kv.substr(eq + 1), true));
        if (amp == std::string_view::npos) break;
        query.remove_prefix(amp + 1);
      }
    }
    req->authorization = std::string(m[http::field::authorization]);
    req->host = std::string(m[http::field::host]);
    req->body = std::move(m.body());
    req->remote = ip_;
    keep_alive_ = m.keep_alive();
    version_ = m.version();
    // Reads and key operations are short and never wait for a disk flush: answered right here,
    // which saves two thread hand-offs per request (RSA private operations are already limited to
    // one per core by the service). Writes (fsync) and key generation (seconds for RSA-4096) go
    // to the workers, so they never stall the TLS and HTTP work of other connections.
    std::string_view path = req->path;
    if (req->method == "GET" || (req->method == "POST" && path.ends_with("wrapkey"))) {
      ApiResponse r;
      try {
        r = srv_.service->Handle(*req);
      } catch (const std::exception&) {
        r = {500, ErrorBody("InternalServerError", "the vault failed handling this request"), ""};
      }
      return Respond(r.status, std::move(r.body), std::move(r.www_authenticate), keep_alive_);
    }
    asio::post(*srv_.workers, [self = shared_from_this(), req] {
      ApiResponse r;
      try {
        r = self->srv_.service->Handle(*req);
      } catch (const std::exception&) {
        r = {500, ErrorBody("InternalServerError", "the vault failed handling this request"), ""};
      }
      asio::post(self->stream_.get_executor(), [self, r = std::move(r)]() mutable {
        if (self->closed_) return;
        self->Respond(r.status, std::move(r.body), std::move(r.www_authenticate), self->keep_alive_);
      });
    });
  }

  // --- writing ---

  void Respond(int status, std::string body, std::string www_authenticate, bool keep_alive) {
    res_ = {};
    res_.version(version_ == 10 ? 10 : 11);
    res_.result(unsigned(status));
    if (!www_authenticate.empty()) res_.set(http::field::www_authenticate, www_authenticate);
    if (!body.empty()) res_.set(http::field::content_type, "application/json; charset=utf-8");
    res_.body() = std::move(body);
    res_.keep_alive(keep_alive);
    res_.prepare_payload();
    Arm(Phase::kWriting, o_.request_timeout);
    writing_ = true;
    http::async_write(stream_, res_, [self = shared_from_this(), keep_alive](error_code ec, size_t) {
      self->writing_ = false;
      if (self->closed_) return;
      if (ec) return self->Close();
      if (!keep_alive) return self->Linger();
      self->parser_.reset();
      self->Arm(Phase::kIdle, self->o_.idle_timeout);
      self->ScanHead();  // a pipelined request may already be buffered
    });
  }

  // An HTTP-layer refusal: an error body in the API's shape, then the connection ends (what is
  // left of the request is not read as another request).
  void Fail(int status, const std::string& code, const std::string& message) {
    if (writing_) return Close();
    Respond(status, ErrorBody(code, message + " (HTTP " + std::to_string(status) + ")"), "", false);
  }

  // After a final answer: read and drop what the client still sends, for a bounded time and
  // amount, so closing does not reset the connection before the client has read the answer (a
  // reset can discard it from the client's receive queue).
  void Linger() {
    if (phase_ != Phase::kLinger) {
      Arm(Phase::kLinger, 2);
      linger_left_ = o_.max_body;
    }
    if (read_pending_) return;  // a read still pending (after a 408) comes back here
    buffer_.consume(buffer_.size());
    read_pending_ = true;
    stream_.async_read_some(buffer_.prepare(16 << 10), [self = shared_from_this()](error_code ec, size_t got) {
      self->read_pending_ = false;
      if (self->closed_) return;
      if (ec || got >= self->linger_left_) return self->Close();
      self->linger_left_ -= got;
      self->Linger();
    });
  }

  VaultServer::Impl& srv_;
  const ServerOptions& o_;
  beast::ssl_stream<tcp::socket> stream_;
  asio::steady_timer timer_;
  std::string ip_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::response<http::string_body> res_;
  Phase phase_ = Phase::kHandshake;
  uint64_t timer_gen_ = 0;
  bool timer_waiting_ = false;
  asio::steady_timer::time_point deadline_ = asio::steady_timer::time_point::max();
  bool closed_ = false, writing_ = false, read_pending_ = false, keep_alive_ = true;
  unsigned version_ = 11;
  size_t scanned_ = 0, lines_ = 0, line_start_ = 0, linger_left_ = 0;
};

}  // namespace

void VaultServer::Impl::Accept() {
  acceptor.async_accept(asio::make_strand(ioc), [this](error_code ec, tcp::socket sock) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {
      // Out of descriptors or memory: wait instead of spinning; open connections end meanwhile.
      accept_retry.expires_after(std::chrono::milliseconds(50));
      accept_retry.async_wait([this](error_code e) {
        if (!e) Accept();
      });
      return;
    }
    error_code ep_ec;
    std::string ip = sock.remote_endpoint(ep_ec).address().to_string();
    if (!ep_ec && Admit(ip)) {
      sock.set_option(tcp::no_delay(true), ep_ec);
      std::make_shared<Session>(*this, std::move(sock), ip)->Start();
    }  // else: over a limit; the socket closes here, before any TLS work is spent on it
    Accept();
  });
}

VaultServer::~VaultServer() {
  impl_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Result<std::unique_ptr<VaultServer>> VaultServer::Start(Env& env, const ServerOptions& opts,
                                                        std::ostream& log) {
  if (opts.dir.empty()) return InvalidArgument("the vault needs a data directory (--dir)");
  DS_ASSIGN_OR_RETURN(auto hp, ParseListen(opts.listen));
  if (opts.handshake_timeout <= 0 || opts.request_timeout <= 0 || opts.idle_timeout <= 0)
    return InvalidArgument("vault timeouts must be positive seconds");
  std::unique_ptr<VaultServer> srv(new VaultServer());
  srv->impl_ = std::make_unique<Impl>();
  Impl& impl = *srv->impl_;
  impl.opts = opts;
  impl.log = &log;
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

  // TLS 1.2 and 1.3, forward-secret AEAD suites only (TLS 1.3's are all AEAD).
  SSL_CTX* ctx = impl.tls.native_handle();
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  // Idle connections give their record buffers back to the allocator.
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  if (SSL_CTX_set_cipher_list(ctx, "ECDHE+AESGCM:ECDHE+CHACHA20") != 1)
    return Internal("TLS setup: no AEAD cipher suite available");
  if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1)
    return InvalidArgument(cert + ": cannot load the certificate chain");
  if (SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1 ||
      SSL_CTX_check_private_key(ctx) != 1)
    return InvalidArgument(key + ": cannot load the private key or it does not match " + cert);

  // Every connection holds a descriptor: keep the limit below what the process may open.
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0) {
    if (rl.rlim_cur < rl.rlim_max) {
      rl.rlim_cur = rl.rlim_max;
      ::setrlimit(RLIMIT_NOFILE, &rl);
      ::getrlimit(RLIMIT_NOFILE, &rl);
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur > 128)
      impl.opts.max_connections = std::min<size_t>(impl.opts.max_connections, rl.rlim_cur - 64);
  }

  DS_ASSIGN_OR_RETURN(auto audit, AuditLog::Open(paths.audit_log()));
  DS_RETURN_IF_ERROR(BeginServing(env, paths, *audit));  // audits an earlier unclean stop
  // A start that fails from here on is not a crash: take the marker back.
  struct MarkerGuard {
    const VaultPaths* paths;
    ~MarkerGuard() { if (paths) EndServing(*paths); }
  } marker{&paths};
  impl.service = std::make_unique<VaultService>(
      std::move(vault.store), std::move(vault.master), std::move(audit), paths.token_stamp());

  error_code ec;
  asio::ip::address addr = asio::ip::make_address(hp.first == "localhost" ? "127.0.0.1" : hp.first, ec);
  if (ec) return InvalidArgument("--listen '" + opts.listen + "': the host must be an IP address");
  tcp::endpoint ep(addr, uint16_t(hp.second));
  impl.acceptor.open(ep.protocol(), ec);
  if (!ec) impl.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl.acceptor.bind(ep, ec);
  if (!ec) impl.acceptor.listen(1024, ec);
  if (ec)
    return NetworkError("cannot listen on " + opts.listen + " (" + ec.message() + ")");
  srv->port_ = impl.acceptor.local_endpoint().port();
  impl.workers = std::make_unique<asio::thread_pool>(std::max<size_t>(opts.threads, 2));
  if (!opts.port_file.empty())
    DS_RETURN_IF_ERROR(env.WriteFileAtomic(opts.port_file, std::to_string(srv->port_) + "\n", 0644));
  std::string shown = hp.first.find(':') != std::string::npos ? "[" + hp.first + "]" : hp.first;
  marker.paths = nullptr;  // serving: the CLI removes the marker after a clean stop
  log << "vault: listening on https://" << shown << ":" << srv->port_ << "\n";
  log.flush();
  return srv;
}

Status VaultServer::Run() {
  Impl& impl = *impl_;
  impl.Accept();
  size_t n = impl.opts.io_threads ? impl.opts.io_threads
                                  : std::max<size_t>(2, std::thread::hardware_concurrency());
  auto run = [&impl] {
    for (;;) {
      try {
        impl.ioc.run();
        return;
      } catch (const std::exception& e) {
        // A handler threw (out of memory): that connection is gone, the others go on.
        *impl.log << "vault: connection handler failed: " << e.what() << "\n";
      }
    }
  };
  std::vector<std::thread> io;
  for (size_t i = 1; i < n; ++i) io.emplace_back(run);
  run();
  for (auto& t : io) t.join();
  // Calls in progress finish (their answers are dropped with the stopped io_context).
  impl.workers->join();
  return Status::Ok();
}

void VaultServer::Stop() { impl_->ioc.stop(); }

}  // namespace ds::vault
