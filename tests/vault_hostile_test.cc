// Hostile clients against the real vault server (`diskseal vault serve`) on loopback, issue 11:
// bodies in every transfer coding, oversized request lines and heads, deep JSON, idle and
// trickling connections, fuzzed HTTP and JSON. Every case asserts that the server stays up, that
// its peak memory stays under kMaxPeakRssKb, and that a real client (curl) from another address
// (127.0.0.2; the attackers use 127.0.0.1, so per-client limits apply to them only) is served
// within a second while the attack goes on. Loops are bounded in count and time; the server runs
// with a 2 s request/handshake deadline so the trickling cases end quickly.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <chrono>
#include <random>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "testlib.h"
#include "vault/client.h"
#include "vault_testutil.h"

namespace ds::test {
namespace {

using Clock = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr double kDeadline = 2;     // the server's --request-timeout here (handshake, request)
constexpr double kIdle = 3;         // its --idle-timeout
constexpr int kPerClient = 150;     // its --max-client-connections
// The server's peak RSS (VmHWM) through any one attack. Before the new front one 64 MiB chunked
// request alone took it to 196 MB.
constexpr long kMaxPeakRssKb = 64 * 1024;

double Since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// A TCP connection from `from` to the server; -1 if refused. Reads and writes time out after 10 s
// so no test can hang on the server.
int Dial(int port, const char* from) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  ::inet_pton(AF_INET, from, &a.sin_addr);
  sockaddr_in s{};
  s.sin_family = AF_INET;
  s.sin_port = htons(uint16_t(port));
  s.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  timeval tv{10, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::connect(fd, reinterpret_cast<sockaddr*>(&s), sizeof s) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// True when the peer has closed `fd` (EOF or reset) within `ms`; data that arrives is dropped.
bool ClosedWithin(int fd, int ms) {
  auto t0 = Clock::now();
  char buf[4096];
  for (;;) {
    int left = ms - int(Since(t0) * 1000);
    if (left <= 0) return false;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, left) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) return true;
  }
}

SSL_CTX* ClientCtx() {
  static SSL_CTX* ctx = [] {
    SSL_CTX* c = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(c, SSL_VERIFY_NONE, nullptr);  // an attacker does not care who serves
    return c;
  }();
  return ctx;
}

// A raw TLS connection (OpenSSL, no HTTP library) for sending whatever bytes a test wants.
class TlsConn {
 public:
  explicit TlsConn(int port, const char* from = "127.0.0.1") {
    fd_ = Dial(port, from);
    if (fd_ < 0) return;
    ssl_ = SSL_new(ClientCtx());
    SSL_set_fd(ssl_, fd_);
    ok_ = SSL_connect(ssl_) == 1;
    ERR_clear_error();
  }
  ~TlsConn() {
    if (ssl_) SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
  }
  TlsConn(const TlsConn&) = delete;
  TlsConn& operator=(const TlsConn&) = delete;

  bool ok() const { return ok_; }
  int fd() const { return fd_; }
  // Writes all of `d`; false once the server has closed the connection.
  bool Write(std::string_view d) {
    while (!d.empty()) {
      int n = SSL_write(ssl_, d.data(), int(std::min<size_t>(d.size(), 1 << 20)));
      if (n <= 0) {
        ERR_clear_error();
        return false;
      }
      d.remove_prefix(size_t(n));
    }
    return true;
  }
  // Sends TLS close_notify: the server sees the end of the stream.
  void Finish() {
    SSL_shutdown(ssl_);
    ERR_clear_error();
  }
  // What arrives until the server closes, `ms` pass, or `max` bytes came.
  std::string ReadAll(int ms, size_t max = 1 << 20) {
    std::string got;
    auto t0 = Clock::now();
    char buf[16384];
    int flags = ::fcntl(fd_, F_GETFL);  // non-blocking while reading: poll() bounds the wait
    ::fcntl(fd_, F_SETFL, flags | O_NONBLOCK);
    while (got.size() < max && !closed_) {
      if (SSL_pending(ssl_) == 0) {
        int left = ms - int(Since(t0) * 1000);
        if (left < 0) break;
        pollfd p{fd_, POLLIN, 0};
        if (::poll(&p, 1, left) <= 0) continue;
      }
      int n = SSL_read(ssl_, buf, sizeof buf);
      if (n <= 0) {
        // Records that carry no data (TLS 1.3 session tickets) leave nothing to read yet.
        bool again = SSL_get_error(ssl_, n) == SSL_ERROR_WANT_READ;
        ERR_clear_error();
        if (again) continue;
        closed_ = true;
        break;
      }
      got.append(buf, size_t(n));
    }
    ::fcntl(fd_, F_SETFL, flags);
    return got;
  }
  bool closed() const { return closed_; }

 private:
  int fd_ = -1;
  SSL* ssl_ = nullptr;
  bool ok_ = false, closed_ = false;
};

// The first bytes a real TLS client sends (its ClientHello), for trickling a handshake.
std::string ClientHello() {
  SSL* ssl = SSL_new(ClientCtx());
  BIO* in = BIO_new(BIO_s_mem());
  BIO* out = BIO_new(BIO_s_mem());
  SSL_set_bio(ssl, in, out);
  SSL_connect(ssl);  // wants to read the ServerHello: the ClientHello is in `out`
  ERR_clear_error();
  char* data = nullptr;
  long n = BIO_get_mem_data(out, &data);
  std::string hello(data, size_t(n));
  SSL_free(ssl);
  return hello;
}

int StatusOf(const std::string& response) {
  if (response.size() < 12 || response.compare(0, 7, "HTTP/1.") != 0) return 0;
  return std::atoi(response.c_str() + 9);
}

struct Rss {
  long rss_kb = 0, hwm_kb = 0;
};
Rss ReadRss(pid_t pid) {
  Rss r;
  std::string s = ReadFileOrDie("/proc/" + std::to_string(pid) + "/status");
  auto field = [&](const char* name) {
    size_t p = s.find(name);
    return p == std::string::npos ? -1L : std::atol(s.c_str() + p + std::strlen(name));
  };
  r.rss_kb = field("VmRSS:");
  r.hwm_kb = field("VmHWM:");
  return r;
}

class VaultHostileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ::signal(SIGPIPE, SIG_IGN);  // writes to connections the server closed fail instead
    vault_ = std::make_unique<VaultProcess>(tmp_ / "vault");
    vault_->SetExtraArgs({"--request-timeout", std::to_string(kDeadline), "--idle-timeout",
                          std::to_string(kIdle), "--max-client-connections",
                          std::to_string(kPerClient), "--max-connections", "600"});
    vault_->Start();
    token_file_ = vault_->Token("admin", "all");
    auto c = vault::VaultClient::Create(*PosixEnv(), vault_->ClientOptions(token_file_));
    ASSERT_TRUE(c.ok()) << c.status().message();
    admin_ = std::move(*c);
    ASSERT_TRUE(admin_->SetSecret("probe", AsBytes("still here"), "", {}).ok());
    // curl reads the header from a file: the token never appears in argv.
    headers_ = tmp_ / "probe.headers";
    WriteFile(headers_, "Authorization: " + Bearer() + "\n");
  }
  void TearDown() override {
    EXPECT_TRUE(vault_->Alive()) << vault_->ReadLog();
    EXPECT_EQ(vault_->Stop(SIGTERM), 0) << vault_->ReadLog();  // and it still stops cleanly
  }

  std::string Bearer() const {
    std::string t = ReadFileOrDie(token_file_);
    while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
    return "Bearer " + t;
  }

  // The real client, from 127.0.0.2: GET a secret, served (200) within a second.
  void ExpectServed(const char* when) {
    SCOPED_TRACE(when);
    ASSERT_TRUE(vault_->Alive()) << vault_->ReadLog();
    auto t0 = Clock::now();
    RunResult r = RunProgram({"curl", "-sS", "--interface", "127.0.0.2", "--max-time", "20",
                              "--cacert", vault_->ca(), "-H", "@" + headers_, "-o", "/dev/null",
                              "-w", "%{http_code}", vault_->url() + "/secrets/probe?api-version=7.4"});
    double took = Since(t0);
    EXPECT_EQ(r.out, "200") << r.err;
    EXPECT_LT(took, 1.0) << "the real client waited " << took << " s";
    ++probes_;
  }
  void ExpectBoundedMemory() {
    Rss r = ReadRss(vault_->pid());
    std::printf("[ vault RSS ] now %ld kB, peak %ld kB\n", r.rss_kb, r.hwm_kb);
#if defined(__SANITIZE_ADDRESS__)
    // Under ASan the server's RSS is the sanitizer's: shadow memory, redzones around every
    // allocation and a quarantine that keeps freed memory (256 MiB by default) put an idle server
    // at ~200 MB. The bound is asserted by the normal build's pass of this same test; here the
    // sanitizer looks for memory errors under the same attacks.
    return;
#endif
    EXPECT_LT(r.hwm_kb, kMaxPeakRssKb) << "peak RSS " << r.hwm_kb << " kB, now " << r.rss_kb;
  }

  // Sends `head` then `filler` repeatedly (up to `total` bytes, 64 MiB by default) on one TLS
  // connection from 127.0.0.1; returns what the server answered after the first `probe_after`
  // bytes (it must have refused by then) and checks the server cut the stream off early.
  std::string Flood(const std::string& head, const std::string& filler, size_t probe_after,
                    size_t total = 64u << 20) {
    TlsConn a(vault_->port());
    EXPECT_TRUE(a.ok());
    if (!a.ok()) return "";
    size_t sent = 0;
    bool open = a.Write(head);
    while (open && sent < probe_after) {
      open = a.Write(filler);
      sent += filler.size();
    }
    std::string answer = a.ReadAll(int(kDeadline * 1000) + 3000, 64 << 10);
    ExpectServed("during the flood");
    while (open && sent < total) {
      open = a.Write(filler);
      sent += filler.size();
    }
    EXPECT_FALSE(open) << "the server took all " << sent << " bytes";
    EXPECT_LT(sent, total / 2);
    return answer;
  }

  static void ExpectApiError(const std::string& response, int status, const std::string& code) {
    EXPECT_EQ(StatusOf(response), status) << response.substr(0, 300);
    size_t body = response.find("\r\n\r\n");
    ASSERT_NE(body, std::string::npos) << response.substr(0, 300);
    json j = json::parse(response.substr(body + 4), nullptr, false);
    ASSERT_TRUE(j.is_object()) << response.substr(0, 300);
    EXPECT_EQ(j["error"]["code"], code) << response.substr(0, 300);
    EXPECT_TRUE(j["error"]["message"].is_string());
  }

  TempDir tmp_;
  std::unique_ptr<VaultProcess> vault_;
  std::unique_ptr<vault::VaultClient> admin_;
  std::string token_file_, headers_;
  int probes_ = 0;
};

TEST_F(VaultHostileTest, ChunkedBodyOf64MiBIsCutAtTheLimit) {
  std::string chunk = "10000\r\n" + std::string(65536, 'a') + "\r\n";  // 64 KiB chunks
  std::string answer = Flood(
      "PUT /secrets/x?api-version=7.4 HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\n\r\n",
      chunk, (1u << 20) + 2 * 65536);
  ExpectApiError(answer, 413, "RequestEntityTooLarge");
  ExpectServed("after");
  ExpectBoundedMemory();
}

TEST_F(VaultHostileTest, BodyWithoutContentLengthIsNotABody) {
  // Without Content-Length or chunked a request has no body: the bytes after the head are the
  // next request's line, refused once longer than the request-line limit.
  std::string answer = Flood("POST /keys/k/unwrapkey?api-version=7.4 HTTP/1.1\r\nHost: v\r\n\r\n",
                             std::string(1 << 16, 'a'), 1 << 17);
  EXPECT_EQ(StatusOf(answer), 401) << answer.substr(0, 300);
  size_t second = answer.find("HTTP/1.1 414");
  ASSERT_NE(second, std::string::npos) << answer.substr(0, 600);
  ExpectApiError(answer.substr(second), 414, "RequestUriTooLong");
  ExpectServed("after");
  ExpectBoundedMemory();
}

TEST_F(VaultHostileTest, Header32MiBLineAndRequestLineAreRefused) {
  std::string answer = Flood("GET /secrets/probe?api-version=7.4 HTTP/1.1\r\nX-Long: ",
                             std::string(1 << 16, 'b'), 1 << 17, 32u << 20);
  ExpectApiError(answer, 431, "RequestHeaderFieldsTooLarge");
  answer = Flood("GET /secrets/", std::string(1 << 16, 'c'), 1 << 17, 32u << 20);
  ExpectApiError(answer, 414, "RequestUriTooLong");
  ExpectServed("after");
  ExpectBoundedMemory();
}

TEST_F(VaultHostileTest, TenThousandHeadersAreRefused) {
  std::string req = "GET /secrets/probe?api-version=7.4 HTTP/1.1\r\nHost: v\r\n";
  for (int i = 0; i < 10000; ++i) req += "X-H" + std::to_string(i) + ": v\r\n";
  req += "\r\n";
  TlsConn a(vault_->port());
  ASSERT_TRUE(a.ok());
  a.Write(req);  // the server may close before all of it is taken
  ExpectApiError(a.ReadAll(5000), 431, "RequestHeaderFieldsTooLarge");
  // 100 fields are still fine.
  std::string ok = "GET /secrets/probe?api-version=7.4 HTTP/1.1\r\nHost: v\r\nAuthorization: " +
                   Bearer() + "\r\n";
  for (int i = 0; i < 97; ++i) ok += "X-H" + std::to_string(i) + ": v\r\n";
  ok += "Connection: close\r\n\r\n";
  TlsConn b(vault_->port());
  ASSERT_TRUE(b.ok());
  ASSERT_TRUE(b.Write(ok));
  EXPECT_EQ(StatusOf(b.ReadAll(5000)), 200);
  ExpectServed("after");
  ExpectBoundedMemory();
}

TEST_F(VaultHostileTest, DeeplyNestedJsonIsRefusedWithoutRecursion) {
  // 110,000 levels overflowed a worker's stack before (the whole vault died).
  for (const std::string& body :
       {std::string(110000, '[') + std::string(110000, ']'),
        R"({"value":"a","tags":)" + std::string(110000, '[') + std::string(110000, ']') + "}",
        R"({"value":"a","attributes":)" + std::string(70000, '{') + "}",
        R"({"value":"a","tags":{"k":)" + std::string(65, '[') + std::string(65, ']') + "}}"}) {
    auto r = admin_->Call("PUT", "/secrets/deep", body);
    ASSERT_TRUE(r.ok()) << r.status().message();
    EXPECT_EQ(r->status, 400) << r->body;
    EXPECT_NE(r->body.find("nests deeper than 64"), std::string::npos) << r->body;
    ASSERT_TRUE(vault_->Alive());
  }
  // 60 levels parse (and are then refused for what they are: a tag must be a string).
  auto r = admin_->Call("PUT", "/secrets/deep",
                        R"({"value":"a","tags":{"k":)" + std::string(60, '[') + std::string(60, ']') + "}}");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 400);
  EXPECT_NE(r->body.find("must be a string"), std::string::npos) << r->body;
  // Brackets inside strings are not nesting.
  r = admin_->Call("PUT", "/secrets/deep", json{{"value", std::string(20000, '[')}}.dump());
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->status, 200) << r->body;
  ExpectServed("after");
  ExpectBoundedMemory();
}

TEST_F(VaultHostileTest, IdleTlsConnectionsCostNoWorkerAndAreLimitedPerClient) {
  std::vector<std::unique_ptr<TlsConn>> idle;
  int accepted = 0;
  for (int i = 0; i < 200; ++i) {
    idle.push_back(std::make_unique<TlsConn>(vault_->port()));
    accepted += idle.back()->ok();
  }
  // 128 and more idle connections are held (the old server had 128 threads, one per
  // connection); past the per-client limit the same address is refused.
  EXPECT_GE(accepted, 128);
  EXPECT_LE(accepted, kPerClient);
  ExpectServed("with the idle connections open");
  ExpectBoundedMemory();
  // Idle keep-alive connections end after the idle timeout.
  auto t0 = Clock::now();
  for (auto& c : idle) {
    if (c->ok()) {
      EXPECT_TRUE(ClosedWithin(c->fd(), int((kIdle + 5) * 1000)));
    }
  }
  EXPECT_LT(Since(t0), kIdle + 5);
  ExpectServed("after");
}

TEST_F(VaultHostileTest, TricklingHandshakesEndAtTheDeadline) {
  // 128 connections sending a real ClientHello one byte every 250 ms (it would take over a
  // minute) and 32 that send nothing: each handshake ends at the deadline however it trickles.
  std::string hello = ClientHello();
  ASSERT_GT(hello.size(), 100u);
  struct Slow {
    int fd;
    double closed_at = -1;
  };
  std::vector<Slow> conns;
  auto t0 = Clock::now();
  for (int i = 0; i < 160; ++i) {
    int fd = Dial(vault_->port(), "127.0.0.1");
    ASSERT_GE(fd, 0);
    conns.push_back({fd});
  }
  bool probed = false;
  for (size_t byte = 0; byte < hello.size() && Since(t0) < kDeadline + 8; ++byte) {
    size_t open = 0;
    for (size_t i = 0; i < conns.size(); ++i) {
      Slow& c = conns[i];
      if (c.closed_at >= 0) continue;
      if (i < 128) (void)::send(c.fd, &hello[byte], 1, MSG_NOSIGNAL);
      char b;
      ssize_t n = ::recv(c.fd, &b, 1, MSG_DONTWAIT);
      if (n == 0 || (n < 0 && errno != EAGAIN)) c.closed_at = Since(t0);
      else ++open;
    }
    if (!probed && Since(t0) > kDeadline / 2) {
      ExpectServed("during the trickle");
      probed = true;
    }
    if (open == 0) break;
    pollfd p{-1, 0, 0};
    ::poll(&p, 0, 250);  // the attacker's pace
  }
  EXPECT_TRUE(probed);
  for (auto& c : conns) {
    EXPECT_GE(c.closed_at, 0) << "a trickling handshake was still open after " << Since(t0) << " s";
    EXPECT_LT(c.closed_at, kDeadline + 3);
    ::close(c.fd);
  }
  ExpectServed("after");
  ExpectBoundedMemory();
}

TEST_F(VaultHostileTest, TricklingRequestsGet408AtTheDeadline) {
  std::vector<std::unique_ptr<TlsConn>> conns;
  for (int i = 0; i < 128; ++i) {
    conns.push_back(std::make_unique<TlsConn>(vault_->port()));
    ASSERT_TRUE(conns.back()->ok());
  }
  std::string slow = "GET /secrets/probe?api-version=7.4 HTTP/1.1\r\nHost: v\r\nX-Slow: ";
  slow += std::string(200, 's');
  std::vector<std::string> answers(conns.size());
  std::vector<double> closed_at(conns.size(), -1);
  auto t0 = Clock::now();
  bool probed = false;
  for (size_t byte = 0; byte < slow.size() && Since(t0) < kDeadline + 8; ++byte) {
    size_t open = 0;
    for (size_t i = 0; i < conns.size(); ++i) {
      if (closed_at[i] >= 0) continue;
      answers[i] += conns[i]->ReadAll(0);  // read before writing: the answer precedes the close
      if (conns[i]->closed()) {
        closed_at[i] = Since(t0);
        continue;
      }
      conns[i]->Write(std::string_view(slow).substr(byte, 1));
      ++open;
    }
    if (!probed && Since(t0) > kDeadline / 2) {
      ExpectServed("during the trickle");
      probed = true;
    }
    if (open == 0) break;
    pollfd p{-1, 0, 0};
    ::poll(&p, 0, 250);
  }
  EXPECT_TRUE(probed);
  int got408 = 0;
  for (size_t i = 0; i < conns.size(); ++i) {
    EXPECT_GE(closed_at[i], 0) << "a trickling request was still open after " << Since(t0) << " s";
    EXPECT_LT(closed_at[i], kDeadline + 3);
    if (StatusOf(answers[i]) == 408) {
      ++got408;
      ExpectApiError(answers[i], 408, "RequestTimeout");
    }
  }
  EXPECT_GE(got408, 64) << "most trickling requests are answered 408 before the close; the first got "
                        << json(answers[0]).dump() << " closed at " << closed_at[0];
  ExpectServed("after");
  ExpectBoundedMemory();
}

// Mutates `s` once: a byte flipped, a run deleted or duplicated, or something hostile inserted.
void Mutate(std::string& s, std::mt19937_64& rng) {
  static const std::vector<std::string> kInserts = {
      "\r\n", "\r", "\n", " ", ":", "\0", "\xff", "%", "%0", ";", "0", "-1", "ffffffffffffffffff",
      "99999999999999999999", "\r\n\r\n", "Content-Length: 5\r\n", "Transfer-Encoding: chunked\r\n",
      "Transfer-Encoding: gzip, chunked\r\n", "Content-Length: 99999999999\r\n", "\t", "HTTP/1.1",
      "Expect: 100-continue\r\n", "Connection: close\r\n", " \r\n folded\r\n"};
  if (s.empty()) s = "x";
  size_t at = rng() % (s.size() + 1);
  switch (rng() % 5) {
    case 0:
      if (at < s.size()) s[at] = char(rng());
      break;
    case 1:
      s.erase(at, rng() % 16);
      break;
    case 2:
      s.insert(at, s.substr(at, rng() % 64));
      break;
    default: {
      const std::string& ins = kInserts[rng() % kInserts.size()];
      s.insert(at, ins == "\0" ? std::string(1, '\0') : ins);
    }
  }
}

TEST_F(VaultHostileTest, FuzzedHttpGets4xxOrCloseNeverACrash) {
  const std::vector<std::string> seeds = {
      "GET /secrets/probe?api-version=7.4 HTTP/1.1\r\nHost: v\r\n\r\n",
      "PUT /secrets/x?api-version=7.4 HTTP/1.1\r\nHost: v\r\nContent-Length: 13\r\n\r\n{\"value\":\"a\"}",
      "PUT /secrets/x?api-version=7.4 HTTP/1.1\r\nHost: v\r\nTransfer-Encoding: chunked\r\n\r\n"
      "5\r\n{\"val\r\n8;ext=1\r\nue\":\"a\"}\r\n0\r\nTrailer: x\r\n\r\n",
      "POST /keys/k/wrapkey?api-version=7.4 HTTP/1.0\r\nContent-Length: 4\r\n\r\n{}\r\n"};
  std::mt19937_64 rng(11);
  int answered = 0, closed = 0;
  auto t0 = Clock::now();
  for (int i = 0; i < 600 && Since(t0) < 120; ++i) {
    std::string req = seeds[rng() % seeds.size()];
    for (int m = 1 + int(rng() % 4); m > 0; --m) Mutate(req, rng);
    SCOPED_TRACE("request " + std::to_string(i) + ": " + json(req).dump(-1, ' ', false, json::error_handler_t::replace));
    TlsConn a(vault_->port());
    ASSERT_TRUE(a.ok()) << "the server stopped accepting";
    a.Write(req);
    a.Finish();
    std::string got = a.ReadAll(int(kDeadline * 1000) + 3000);
    if (got.empty()) {
      ++closed;
      continue;
    }
    ++answered;
    int status = StatusOf(got);
    EXPECT_GE(status, 400) << got.substr(0, 300);
    EXPECT_LT(status, 500) << got.substr(0, 300);
    EXPECT_EQ(got.find("HTTP/1.1 5"), std::string::npos) << got.substr(0, 300);
    if (i % 100 == 0) {
      ASSERT_TRUE(vault_->Alive()) << vault_->ReadLog();
    }
  }
  std::printf("[ fuzz ] %d answered 4xx, %d closed without an answer\n", answered, closed);
  EXPECT_GT(answered, 100);
  ExpectServed("after");
  ExpectBoundedMemory();
}

TEST_F(VaultHostileTest, FuzzedJsonBodiesGetAnAnswerNeverACrash) {
  ASSERT_TRUE(admin_->CreateKey("k", "RSA", 2048).ok());
  const std::vector<std::pair<std::string, std::string>> seeds = {
      {"/secrets/f", R"({"value":"v","contentType":"t","tags":{"a":"b"},"attributes":{"enabled":true,"exp":99999999999}})"},
      {"/keys/k/wrapkey", R"({"alg":"RSA-OAEP","value":"AAECAwQFBgcICQoLDA0ODw"})"},
      {"/keys/n/create", R"({"kty":"oct","key_size":256,"key_ops":["wrapKey","unwrapKey"],"tags":{}})"}};
  const std::string kJsonBits = "[]{}\":,\\0123456789.eE+-truefalsenull \xff\x01";
  std::mt19937_64 rng(12);
  auto t0 = Clock::now();
  int n = 0;
  for (; n < 400 && Since(t0) < 120; ++n) {
    auto [path, body] = seeds[rng() % seeds.size()];
    if (rng() % 4 == 0) {
      body.clear();  // random JSON-ish text, up to 100 levels deep
      for (size_t len = rng() % 400; len > 0; --len) body += kJsonBits[rng() % kJsonBits.size()];
    } else {
      for (int m = 1 + int(rng() % 6); m > 0; --m) {
        size_t at = rng() % (body.size() + 1);
        if (rng() % 2) body.insert(at, std::string(rng() % 80, "[{\""[rng() % 3]));
        else if (at < body.size()) body[at] = kJsonBits[rng() % kJsonBits.size()];
      }
    }
    std::string method = path.starts_with("/secrets") ? "PUT" : "POST";
    auto r = admin_->Call(method, path, body);
    ASSERT_TRUE(r.ok()) << r.status().message() << " for " << body;
    EXPECT_LT(r->status, 500) << body << " -> " << r->body;
    if (r->status >= 400) {
      EXPECT_TRUE(json::parse(r->body, nullptr, false).contains("error")) << r->body;
    }
  }
  std::printf("[ fuzz ] %d JSON bodies\n", n);
  ExpectServed("after");
  ExpectBoundedMemory();
}

}  // namespace
}  // namespace ds::test
