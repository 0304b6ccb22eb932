#include "fuse/online_control.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <thread>
#include <vector>

#include "engine/engine.h"
#include "engine/reencrypt_state.h"
#include "luks2/metadata.h"
#include "luks2/volume.h"

namespace ds::fuse {

namespace {

std::string Canonical(const std::string& path) {
  if (path.empty()) return path;
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

bool SendAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= size_t(w);
  }
  return true;
}

// Reads exactly n bytes; false on EOF or error.
bool RecvAll(int fd, void* data, size_t n) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    ssize_t r = ::recv(fd, p, n, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    p += r;
    n -= size_t(r);
  }
  return true;
}

// One line (without '\n'), read a byte at a time: the key bytes that follow must not be read
// into an ordinary buffer. Bounded at 256 characters.
bool RecvLine(int fd, std::string* line) {
  line->clear();
  char c;
  while (line->size() < 256) {
    if (!RecvAll(fd, &c, 1)) return false;
    if (c == '\n') return true;
    line->push_back(c);
  }
  return false;
}

uint32_t LargestSectorSize(const luks2::Metadata& md) {
  uint32_t s = 512;
  for (const auto& seg : luks2::Segments(md))
    if (seg.type == "crypt") s = std::max(s, seg.sector_size);
  return s;
}

// The engine's gate over the served view: see the file comment in online_control.h.
class ViewGate : public engine::ZoneGate {
 public:
  ViewGate(GatedDevice* view, luks2::Volume* v, const std::map<int, const SecureBuffer*>* keys)
      : view_(view), v_(v), keys_(keys) {}
  Status Hold(uint64_t offset, uint64_t len, uint64_t) override { return view_->Hold(offset, len); }
  Status Release(const luks2::Metadata&) override {
    // v_ is the engine's volume: its metadata is the header just committed.
    auto next = v_->OpenData(*keys_);
    if (!next.ok()) return next.status().WithContext(view_->name() + ": the view of the new layout");
    DS_RETURN_IF_ERROR(view_->Swap(std::move(*next)));
    view_->Open();
    return Status::Ok();
  }

 private:
  GatedDevice* view_;
  luks2::Volume* v_;
  const std::map<int, const SecureBuffer*>* keys_;
};

}  // namespace

std::string ControlSocketPath(const RunDir& run, const std::string& name) {
  return run.dir() + "/.state/" + name + ".sock";
}

struct ControlServer::Impl {
  ControlConfig cfg;
  std::string path;
  int listen_fd = -1;
  int quit_fd = -1;  // eventfd: the server is being destroyed
  std::atomic<bool> stop{false};
  std::thread thread;
  // Volumes the engine ran on: the views swapped in borrow their data device, and a view lives
  // as long as the daemon serves. Only the control thread touches this.
  std::vector<std::unique_ptr<luks2::Volume>> volumes;

  void Loop() {
    for (;;) {
      pollfd fds[2] = {{listen_fd, POLLIN, 0}, {quit_fd, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0) {
        if (errno == EINTR) continue;
        return;
      }
      if (fds[1].revents) return;
      int c = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      ucred cred{};
      socklen_t cl = sizeof cred;
      if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &cl) == 0 &&
          (cred.uid == 0 || cred.uid == ::geteuid())) {
        Serve(c);
      }
      ::close(c);
    }
  }

  void Reply(int c, std::mutex& mu, const Status& s) {
    std::string msg = s.message();
    for (char& ch : msg)
      if (ch == '\n') ch = ' ';
    std::string line = "R " + std::to_string(int(s.code())) + " " + msg + "\n";
    std::lock_guard l(mu);
    SendAll(c, line.data(), line.size());
  }

  void Serve(int c) {
    std::mutex send_mu;
    std::string line;
    if (!RecvLine(c, &line)) return;
    std::istringstream req(line);
    std::string verb;
    DaemonRunOptions o;
    size_t nkeys = 0;
    if (!(req >> verb >> o.hotzone_bytes >> o.threads >> o.stop_after >> nkeys) || verb != "RUN" ||
        nkeys > 8) {
      Reply(c, send_mu, InvalidArgument(cfg.name + ": malformed control request"));
      return;
    }
    std::map<int, SecureBuffer> owned;
    for (size_t i = 0; i < nkeys; ++i) {
      int digest = -1;
      size_t len = 0;
      if (!RecvLine(c, &line)) return;
      std::istringstream kl(line);
      if (!(kl >> digest >> len) || len == 0 || len > 512) {
        Reply(c, send_mu, InvalidArgument(cfg.name + ": malformed key in the control request"));
        return;
      }
      SecureBuffer k(len);
      if (!RecvAll(c, k.data(), len)) return;
      owned.emplace(digest, std::move(k));
    }
    std::map<int, const SecureBuffer*> keys;
    for (auto& [d, k] : owned) keys[d] = &k;

    Status s = Prepare();
    if (!s.ok()) {
      Reply(c, send_mu, s);
      return;
    }
    luks2::Volume& v = *volumes.back();
    ViewGate gate(cfg.view, &v, &keys);
    engine::EngineOptions eo;
    eo.hotzone_bytes = o.hotzone_bytes;
    eo.threads = o.threads;
    eo.stop_after = o.stop_after;
    eo.stop = &stop;
    eo.in_use = true;
    eo.gate = &gate;
    // The engine advances a Progress; only its observer is used here, to relay "P <done>".
    auto st = engine::ReadState(v.metadata(), v.data_device().Size());
    const uint64_t total = st.ok() && *st ? (*st)->data_size : 0;
    const uint64_t start = st.ok() && *st ? (*st)->done : 0;
    Progress p(nullptr, Progress::Mode::kNone, "online", total, start);
    p.SetObserver([c, &send_mu](const Progress::Snapshot& snap) {
      std::string pl = "P " + std::to_string(snap.done) + "\n";
      std::lock_guard l(send_mu);
      SendAll(c, pl.data(), pl.size());
    });
    eo.progress = &p;
    {
      // Where this run starts: the client's progress counts from here.
      std::string pl = "P " + std::to_string(start) + "\n";
      std::lock_guard l(send_mu);
      SendAll(c, pl.data(), pl.size());
    }

    std::atomic<bool> run_stop{false};
    int done_fd = ::eventfd(0, EFD_CLOEXEC);
    Status result;
    std::thread worker([&] {
      result = engine::RunOperation(v, keys, eo);
      uint64_t one = 1;
      if (done_fd >= 0 && ::write(done_fd, &one, sizeof one) < 0) {
      }
    });
    // Meanwhile: the client's STOP (or its going away), or the server's end, stop the engine at
    // its next commit point.
    bool client_open = true, quitting = false;
    while (done_fd >= 0) {
      pollfd fds[3] = {{done_fd, POLLIN, 0},
                       {quitting ? -1 : quit_fd, POLLIN, 0},
                       {client_open ? c : -1, POLLIN, 0}};
      if (::poll(fds, 3, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[0].revents) break;
      if (fds[1].revents) {  // left readable: Loop() sees it and ends after this request
        stop.store(true);
        quitting = true;
      }
      if (fds[2].revents) {
        // "STOP", or the client gone (EOF, error): either way, stop at the next commit point.
        char buf[64];
        ssize_t n = ::recv(c, buf, sizeof buf, MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
        if (n <= 0) client_open = false;
        stop.store(true);
      }
    }
    worker.join();
    if (done_fd >= 0) ::close(done_fd);
    stop.store(false);
    if (cfg.view->held()) {
      // The step failed between Hold and Release: make the range's layout known again.
      Status r = RecoverHeldZone(keys);
      if (!r.ok()) {
        cfg.view->Poison(r.message());
        result = Status(result.code(), result.message() + "; the hotzone could not be recovered in the "
                                                          "daemon (" + r.message() + "): close and open the volume again");
      }
    }
    if (result.ok()) p.Finish();
    Reply(c, send_mu, result);
  }

  // Loads the volume fresh from disk (a command may have just recorded the operation) and checks
  // that the daemon can serve every layout it will pass through.
  Status Prepare() {
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*cfg.env, cfg.device, cfg.header, true));
    DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
    if (!st) return InvalidArgument(cfg.device + ": no in-place operation is recorded in its header");
    if (uint32_t need = LargestSectorSize(v.metadata()); need > cfg.atomic_unit)
      return Unsupported(cfg.device + ": the new layout's sector size (" + std::to_string(need) +
                         ") is larger than the unit the open view serves (" + std::to_string(cfg.atomic_unit) +
                         "); close it and open it again, then resume");
    volumes.push_back(std::make_unique<luks2::Volume>(std::move(v)));
    return Status::Ok();
  }

  Status RecoverHeldZone(const std::map<int, const SecureBuffer*>& keys) {
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*cfg.env, cfg.device, cfg.header, true));
    DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
    if (st && st->hotzone_len) {
      engine::EngineOptions eo;
      eo.until_done = st->done + *st->hotzone_len;
      DS_RETURN_IF_ERROR(engine::RunOperation(v, keys, eo));
    }
    DS_ASSIGN_OR_RETURN(auto next, v.OpenData(keys));
    volumes.push_back(std::make_unique<luks2::Volume>(std::move(v)));
    DS_RETURN_IF_ERROR(cfg.view->Swap(std::move(next)));
    cfg.view->Open();
    return Status::Ok();
  }
};

ControlServer::ControlServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

ControlServer::~ControlServer() {
  uint64_t one = 1;
  if (::write(impl_->quit_fd, &one, sizeof one) < 0) {
  }
  if (impl_->thread.joinable()) impl_->thread.join();
  ::close(impl_->listen_fd);
  ::close(impl_->quit_fd);
  ::unlink(impl_->path.c_str());
}

Result<std::unique_ptr<ControlServer>> ControlServer::Start(const std::string& socket_path,
                                                            ControlConfig cfg) {
  sockaddr_un addr{};
  if (socket_path.size() >= sizeof addr.sun_path)
    return InvalidArgument(socket_path + ": path too long for a unix socket");
  auto impl = std::make_unique<Impl>();
  impl->cfg = std::move(cfg);
  impl->path = socket_path;
  ::unlink(socket_path.c_str());  // a dead daemon's socket
  impl->listen_fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (impl->listen_fd < 0) return PosixError("socket", errno);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, socket_path.c_str(), socket_path.size());
  if (::bind(impl->listen_fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::chmod(socket_path.c_str(), 0600) != 0 || ::listen(impl->listen_fd, 4) != 0) {
    int e = errno;
    ::close(impl->listen_fd);
    return PosixError(socket_path, e);
  }
  impl->quit_fd = ::eventfd(0, EFD_CLOEXEC);
  if (impl->quit_fd < 0) {
    int e = errno;
    ::close(impl->listen_fd);
    return PosixError("eventfd", e);
  }
  Impl* raw = impl.get();
  std::unique_ptr<ControlServer> server(new ControlServer(std::move(impl)));
  raw->thread = std::thread([raw] { raw->Loop(); });
  return server;
}

Result<std::optional<Mapping>> ServingDaemon(RunDir& run, const std::string& device,
                                             const std::string& header) {
  const std::string dev = Canonical(device), hdr = Canonical(header);
  std::vector<std::string> bad;
  auto listed = run.List(&bad);
  // A run directory this user cannot read holds no view it could ask (the socket is the owner's).
  if (!listed.ok()) return std::optional<Mapping>();
  auto& recs = *listed;
  for (auto& r : recs)
    if (r.device == dev && r.header == hdr && !r.read_only && RunDir::IsAlive(r))
      return std::optional<Mapping>(std::move(r));
  return std::optional<Mapping>();
}

Status RunInDaemon(const RunDir& run, const Mapping& m,
                   const std::map<int, const SecureBuffer*>& keys, const DaemonRunOptions& opts,
                   Progress* progress, const std::atomic<bool>* stop) {
  const std::string path = ControlSocketPath(run, m.name);
  sockaddr_un addr{};
  if (path.size() >= sizeof addr.sun_path) return InvalidArgument(path + ": path too long for a unix socket");
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return PosixError("socket", errno);
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.c_str(), path.size());
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int e = errno;
    ::close(fd);
    return Busy(m.name + ": the daemon serving " + m.file + " (pid " + std::to_string(m.pid) +
                       ") takes no requests (" + std::strerror(e) + "; opened by an older diskseal?): close "
                       "and open it again");
  }
  std::string req = "RUN " + std::to_string(opts.hotzone_bytes) + " " + std::to_string(opts.threads) + " " +
                    std::to_string(opts.stop_after) + " " + std::to_string(keys.size()) + "\n";
  bool ok = SendAll(fd, req.data(), req.size());
  for (const auto& [digest, key] : keys) {
    std::string kl = std::to_string(digest) + " " + std::to_string(key->size()) + "\n";
    ok = ok && SendAll(fd, kl.data(), kl.size()) && SendAll(fd, key->data(), key->size());
  }
  if (!ok) {
    ::close(fd);
    return IOError(m.name + ": the daemon closed the control connection");
  }
  uint64_t last = 0;
  bool have_last = false, stop_sent = false;
  std::string buf;
  for (;;) {
    if (stop && stop->load() && !stop_sent) {
      SendAll(fd, "STOP\n", 5);
      stop_sent = true;
    }
    size_t nl;
    while ((nl = buf.find('\n')) != std::string::npos) {
      std::string line = buf.substr(0, nl);
      buf.erase(0, nl + 1);
      if (line.rfind("P ", 0) == 0) {
        uint64_t done = std::strtoull(line.c_str() + 2, nullptr, 10);
        if (progress && have_last && done > last) progress->Advance(done - last);
        last = done;
        have_last = true;
      } else if (line.rfind("R ", 0) == 0) {
        ::close(fd);
        char* end = nullptr;
        long code = std::strtol(line.c_str() + 2, &end, 10);
        std::string msg = (end && *end == ' ') ? std::string(end + 1) : std::string();
        return code == 0 ? Status::Ok() : Status(Code(code), msg);
      }
    }
    pollfd p{fd, POLLIN, 0};
    // A signal (SIGINT/SIGTERM: the caller's handler sets `stop`) interrupts the wait.
    int rc = ::poll(&p, 1, -1);
    if (rc < 0 && errno == EINTR) continue;
    char chunk[512];
    ssize_t n = rc > 0 ? ::recv(fd, chunk, sizeof chunk, 0) : -1;
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ::close(fd);
      return IOError(m.name + ": the daemon serving " + m.file +
                     " ended the connection before the operation ended (see " + m.file +
                     " log in the run directory); `diskseal resume` carries it on");
    }
    buf.append(chunk, size_t(n));
  }
}

}  // namespace ds::fuse
