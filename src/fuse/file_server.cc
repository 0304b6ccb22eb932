#define FUSE_USE_VERSION 314
#include "fuse/file_server.h"

#include <fuse3/fuse_lowlevel.h>
#include <pthread.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <condition_variable>
#include <deque>
#include <functional>
#include <thread>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <mutex>
#include <vector>

namespace ds::fuse {

namespace {
constexpr fuse_ino_t kRoot = FUSE_ROOT_ID;
// The file's size never changes while mounted, so the kernel may cache attributes for long.
constexpr double kAttrTimeout = 3600.0;
}  // namespace

// Splits one large request into pieces that helper threads transform (decrypt/encrypt) at the
// same time: the kernel sends a sequential stream one request at a time, so without this a single
// reader or writer would use one core. Pieces are disjoint and sector-aligned.
class PieceRunner {
 public:
  explicit PieceRunner(unsigned helpers) {
    for (unsigned i = 0; i < helpers; ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~PieceRunner() {
    {
      std::lock_guard l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_) t.join();
  }
  unsigned helpers() const { return unsigned(threads_.size()); }

  // Runs fn(i) for i in [0, n): pieces 1..n-1 on helpers, piece 0 here; returns the first error.
  Status Run(size_t n, const std::function<Status(size_t)>& fn) {
    struct Batch {
      std::mutex mu;
      std::condition_variable done;
      size_t left;
      Status first;
    } b;
    b.left = n - 1;
    auto finish = [&b](Status st) {
      std::lock_guard l(b.mu);
      if (!st.ok() && b.first.ok()) b.first = st;
      if (--b.left == 0) b.done.notify_one();
    };
    {
      std::lock_guard l(mu_);
      for (size_t i = 1; i < n; ++i) work_.push_back([&fn, &finish, i] { finish(fn(i)); });
    }
    cv_.notify_all();
    Status s0 = fn(0);
    std::unique_lock l(b.mu);
    b.done.wait(l, [&b] { return b.left == 0; });
    return s0.ok() ? b.first : s0;
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock l(mu_);
        cv_.wait(l, [this] { return stop_ || !work_.empty(); });
        if (work_.empty()) return;
        job = std::move(work_.front());
        work_.pop_front();
      }
      job();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> work_;
  std::vector<std::thread> threads_;
  bool stop_ = false;
};

constexpr size_t kPiece = 256 << 10;

struct FileServer::Impl {
  BlockDevice* dev = nullptr;
  ServeOptions opts;
  fuse_session* se = nullptr;
  bool mounted = false;
  uid_t uid = 0;
  gid_t gid = 0;
  // Shared for ordinary requests, exclusive for unaligned writes (read-modify-write of a sector
  // must not interleave with another request touching the same sector).
  std::shared_mutex rw;
  std::mutex err_mu;
  Status first_error;
  std::thread signal_thread;  // HandleSignals(): turns SIGTERM into a clean umount
  std::unique_ptr<PieceRunner> pieces;  // null: one core per request

  // Reads or writes [off, off + len) as parallel pieces when it is large and sector-aligned.
  template <class Fn>
  Status Split(uint64_t off, size_t len, Fn fn) {
    if (!pieces || len < 2 * kPiece || off % opts.atomic_unit || len % opts.atomic_unit ||
        kPiece % opts.atomic_unit)
      return fn(off, 0, len);
    size_t n = std::min<size_t>((len + kPiece - 1) / kPiece, pieces->helpers() + 1);
    size_t step = (len / n + opts.atomic_unit - 1) / opts.atomic_unit * opts.atomic_unit;
    n = (len + step - 1) / step;
    return pieces->Run(n, [&](size_t i) {
      size_t begin = i * step, end = std::min(len, begin + step);
      return fn(off + begin, begin, end - begin);
    });
  }

  void NoteError(const Status& s) {
    std::lock_guard l(err_mu);
    if (first_error.ok()) first_error = s;
  }

  struct stat Attr() const {
    struct stat st {};
    st.st_ino = kRoot;
    st.st_mode = S_IFREG | (opts.read_only ? 0400 : 0600);
    st.st_nlink = 1;
    st.st_uid = uid;
    st.st_gid = gid;
    st.st_size = off_t(dev->Size());
    st.st_blksize = 4096;
    st.st_blocks = blkcnt_t((dev->Size() + 511) / 512);
    return st;
  }
};

namespace {

FileServer::Impl* Self(fuse_req_t req) {
  return static_cast<FileServer::Impl*>(fuse_req_userdata(req));
}

void OpInit(void*, fuse_conn_info* conn) {
  conn->want &= ~unsigned(FUSE_CAP_WRITEBACK_CACHE);  // see file_server.h
  // Reads of different ranges may be in flight at once (the default for FUSE is serialised).
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  if (conn->capable & FUSE_CAP_ASYNC_DIO) conn->want |= FUSE_CAP_ASYNC_DIO;
  conn->max_readahead = 1 << 20;
  conn->max_background = std::max<unsigned>(conn->max_background, 64);
  conn->congestion_threshold = conn->max_background * 3 / 4;
}

void OpLookup(fuse_req_t req, fuse_ino_t, const char*) { fuse_reply_err(req, ENOENT); }

void OpGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  if (ino != kRoot) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  struct stat st = Self(req)->Attr();
  fuse_reply_attr(req, &st, kAttrTimeout);
}

// Size changes are refused (a device does not grow); mode/owner/time changes are accepted and
// ignored so tools that touch the file (cp --preserve, touch) do not fail.
void OpSetattr(fuse_req_t req, fuse_ino_t, struct stat* attr, int to_set, fuse_file_info*) {
  auto* self = Self(req);
  if ((to_set & FUSE_SET_ATTR_SIZE) && uint64_t(attr->st_size) != self->dev->Size()) {
    fuse_reply_err(req, EPERM);
    return;
  }
  struct stat st = self->Attr();
  fuse_reply_attr(req, &st, kAttrTimeout);
}

void OpOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  auto* self = Self(req);
  if (ino != kRoot) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  if ((fi->flags & O_ACCMODE) != O_RDONLY && self->opts.read_only) {
    fuse_reply_err(req, EROFS);
    return;
  }
  if ((fi->flags & O_TRUNC) && self->dev->Size() != 0) {
    fuse_reply_err(req, EPERM);
    return;
  }
  // Only this process changes the contents, so cached pages stay valid across opens.
  fi->keep_cache = 1;
  fuse_reply_open(req, fi);
}

void OpRead(fuse_req_t req, fuse_ino_t, size_t size, off_t off, fuse_file_info*) {
  auto* self = Self(req);
  const uint64_t dsize = self->dev->Size();
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (uint64_t(off) >= dsize) {
    fuse_reply_buf(req, nullptr, 0);
    return;
  }
  size_t n = size_t(std::min<uint64_t>(size, dsize - uint64_t(off)));
  // One buffer per worker thread, reused: no allocation (and no zero-fill) per request.
  thread_local std::vector<uint8_t> tbuf;
  if (tbuf.size() < n) tbuf.resize(n);
  std::span<uint8_t> buf(tbuf.data(), n);
  Status s;
  {
    std::shared_lock l(self->rw);
    s = self->Split(uint64_t(off), n, [&](uint64_t o, size_t at, size_t len) {
      return self->dev->ReadAt(o, buf.subspan(at, len));
    });
  }
  if (!s.ok()) {
    self->NoteError(s);
    fuse_reply_err(req, EIO);
    return;
  }
  fuse_reply_buf(req, reinterpret_cast<const char*>(buf.data()), n);
  if (tbuf.size() > (4u << 20)) std::vector<uint8_t>().swap(tbuf);  // never keep a huge one
}

void OpWrite(fuse_req_t req, fuse_ino_t, const char* data, size_t size, off_t off,
             fuse_file_info*) {
  auto* self = Self(req);
  const uint64_t dsize = self->dev->Size();
  if (off < 0) {
    fuse_reply_err(req, EINVAL);
    return;
  }
  if (uint64_t(off) >= dsize) {
    fuse_reply_err(req, size == 0 ? 0 : ENOSPC);
    return;
  }
  size_t n = size_t(std::min<uint64_t>(size, dsize - uint64_t(off)));
  std::span<const uint8_t> bytes(reinterpret_cast<const uint8_t*>(data), n);
  const uint32_t unit = self->opts.atomic_unit;
  Status s;
  if (uint64_t(off) % unit == 0 && n % unit == 0) {
    std::shared_lock l(self->rw);
    s = self->Split(uint64_t(off), n, [&](uint64_t o, size_t at, size_t len) {
      return self->dev->WriteAt(o, bytes.subspan(at, len));
    });
  } else {
    std::unique_lock l(self->rw);
    s = self->dev->WriteAt(uint64_t(off), bytes);
  }
  if (!s.ok()) {
    self->NoteError(s);
    fuse_reply_err(req, EIO);
    return;
  }
  fuse_reply_write(req, n);
}

void SyncReply(fuse_req_t req) {
  auto* self = Self(req);
  Status s = self->dev->Sync();
  if (!s.ok()) self->NoteError(s);
  fuse_reply_err(req, s.ok() ? 0 : EIO);
}

void OpFsync(fuse_req_t req, fuse_ino_t, int, fuse_file_info*) { SyncReply(req); }

// close(2) of a written file is a natural durability point for image tools (dd, cp): sync then.
void OpFlush(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  if ((fi->flags & O_ACCMODE) == O_RDONLY) {
    fuse_reply_err(req, 0);
    return;
  }
  SyncReply(req);
}

void OpRelease(fuse_req_t req, fuse_ino_t, fuse_file_info*) { fuse_reply_err(req, 0); }

void OpStatfs(fuse_req_t req, fuse_ino_t) {
  auto* self = Self(req);
  struct statvfs sv {};
  sv.f_bsize = 4096;
  sv.f_frsize = 4096;
  sv.f_blocks = fsblkcnt_t(self->dev->Size() / 4096);
  sv.f_files = 1;
  sv.f_namemax = 255;
  fuse_reply_statfs(req, &sv);
}

void OpAccess(fuse_req_t req, fuse_ino_t, int mask) {
  fuse_reply_err(req, (mask & W_OK) && Self(req)->opts.read_only ? EROFS : 0);
}

const fuse_lowlevel_ops kOps = [] {
  fuse_lowlevel_ops o{};
  o.init = OpInit;
  o.lookup = OpLookup;
  o.getattr = OpGetattr;
  o.setattr = OpSetattr;
  o.open = OpOpen;
  o.read = OpRead;
  o.write = OpWrite;
  o.flush = OpFlush;
  o.fsync = OpFsync;
  o.release = OpRelease;
  o.statfs = OpStatfs;
  o.access = OpAccess;
  return o;
}();

// FUSE mounts start with 128 KiB of readahead, which makes sequential reads a stream of small
// requests, each a round trip through the daemon. 1 MiB (the largest request FUSE sends) halves
// the per-byte overhead. Found through mountinfo, not stat(): stat would wait for this very
// daemon to answer. Best effort: without it reads are slower, not wrong.
void RaiseReadahead(const std::string& mountpoint) {
  std::ifstream mi("/proc/self/mountinfo");
  std::string line;
  while (std::getline(mi, line)) {
    std::istringstream f(line);
    std::string id, parent, majmin, root, mp;
    if (!(f >> id >> parent >> majmin >> root >> mp)) continue;
    if (mp != mountpoint) continue;
    std::ofstream ra("/sys/class/bdi/" + majmin + "/read_ahead_kb");
    ra << 1024 << "\n";
  }
}

}  // namespace

Status CheckFuseAvailable() {
  struct stat st;
  // /dev/fuse is the character device 10:229; anything else there (a container's placeholder, a
  // bind-mounted /dev/null) cannot serve FUSE.
  bool is_fuse = ::stat("/dev/fuse", &st) == 0 && S_ISCHR(st.st_mode) &&
                 major(st.st_rdev) == 10 && minor(st.st_rdev) == 229;
  if (!is_fuse || ::access("/dev/fuse", R_OK | W_OK) != 0)
    return Unsupported(
        "FUSE is not available: /dev/fuse is missing or not accessible (install the Debian "
        "package fuse3 and load the fuse kernel module: modprobe fuse)");
  if (::geteuid() != 0 && ::access("/usr/bin/fusermount3", X_OK) != 0)
    return Unsupported("FUSE is not available: fusermount3 is missing (install the Debian "
                       "package fuse3)");
  return Status::Ok();
}

FileServer::FileServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

FileServer::~FileServer() {
  if (impl_->signal_thread.joinable()) {
    pthread_kill(impl_->signal_thread.native_handle(), SIGUSR1);
    impl_->signal_thread.join();
  }
  if (impl_->se) {
    if (impl_->mounted) fuse_session_unmount(impl_->se);
    fuse_session_destroy(impl_->se);
  }
}

Result<std::unique_ptr<FileServer>> FileServer::Mount(BlockDevice* dev,
                                                      const ServeOptions& opts) {
  DS_RETURN_IF_ERROR(CheckFuseAvailable());
  struct stat st;
  if (::stat(opts.mountpoint.c_str(), &st) != 0) return PosixError(opts.mountpoint, errno);
  if (!S_ISREG(st.st_mode))
    return InvalidArgument(opts.mountpoint + ": the mount point must be a regular file");
  if (!opts.read_only && !dev->writable())
    return InvalidArgument(dev->name() + ": opened read-only but served read-write");
  if (opts.atomic_unit == 0 || (opts.atomic_unit & (opts.atomic_unit - 1)) != 0)
    return InvalidArgument("atomic unit must be a power of two");

  auto impl = std::make_unique<Impl>();
  impl->dev = dev;
  // One helper per extra core: more would only contend on a machine this size.
  unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  if (opts.split_large_requests && cores > 1)
    impl->pieces = std::make_unique<PieceRunner>(std::min(cores - 1, 7u));
  impl->opts = opts;
  impl->uid = ::getuid();
  impl->gid = ::getgid();

  // Options as fuse's mount(8) helpers spell them; libfuse parses them from argv.
  std::string mount_opts = "-odefault_permissions,fsname=" +
                           (opts.fsname.empty() ? std::string("diskseal") : opts.fsname) +
                           ",subtype=diskseal";
  if (opts.read_only) mount_opts += ",ro";
  std::vector<std::string> argv_s = {"diskseal", mount_opts};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(int(argv.size()), argv.data());
  impl->se = fuse_session_new(&args, &kOps, sizeof kOps, impl.get());
  fuse_opt_free_args(&args);
  if (!impl->se) return Internal(opts.mountpoint + ": cannot create the FUSE session");
  std::unique_ptr<FileServer> server(new FileServer(std::move(impl)));
  if (fuse_session_mount(server->impl_->se, opts.mountpoint.c_str()) != 0)
    return IOError(opts.mountpoint + ": FUSE mount failed (see the message above)");
  server->impl_->mounted = true;
  RaiseReadahead(opts.mountpoint);
  return server;
}

Status FileServer::HandleSignals() {
  // A signal must not end the loop before the kernel has written back its dirty pages (writeback
  // cache): the signal thread does an ordinary umount instead, which flushes through the still
  // running workers and then ends the loop. If the file is in use (a loop device), umount fails
  // with EBUSY and the view keeps serving: stopping then would lose data.
  sigset_t set;
  sigemptyset(&set);
  for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGUSR1}) sigaddset(&set, sig);
  if (int e = pthread_sigmask(SIG_BLOCK, &set, nullptr); e != 0)
    return PosixError("pthread_sigmask", e);
  impl_->signal_thread = std::thread([impl = impl_.get(), set] {
    for (;;) {
      int sig = 0;
      if (sigwait(&set, &sig) != 0 || sig == SIGUSR1) return;  // SIGUSR1: the server is done
      if (::umount2(impl->opts.mountpoint.c_str(), 0) != 0) {
        std::fprintf(stderr, "diskseal: %s: not stopping on signal %d: %s\n",
                     impl->opts.mountpoint.c_str(), sig, std::strerror(errno));
      }
    }
  });
  return Status::Ok();
}

Status FileServer::Serve() {
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  if (!cfg) return Internal("cannot create the FUSE loop configuration");
  fuse_loop_cfg_set_max_threads(cfg, std::max(1u, impl_->opts.max_threads));
  fuse_loop_cfg_set_idle_threads(cfg, std::max(1u, impl_->opts.max_threads));
  int rc = fuse_session_loop_mt(impl_->se, cfg);
  fuse_loop_cfg_destroy(cfg);
  // The loop ends when the kernel drops the connection (umount) or a signal asked to stop;
  // in the second case the mount is still there and must go before the device is released.
  if (impl_->mounted) {
    fuse_session_unmount(impl_->se);
    impl_->mounted = false;
  }
  Status s = impl_->dev->Sync();
  std::lock_guard l(impl_->err_mu);
  if (!impl_->first_error.ok()) return impl_->first_error;
  if (!s.ok()) return s;
  // ENODEV and ECONNABORTED both mean the kernel ended the connection; which one an unmount
  // gives depends on the kernel and on timing (seen: ECONNABORTED under the sanitizer build's
  // slower threads). Neither loses an acknowledged write -- without a writeback cache every
  // write was answered before the unmount could complete -- and the Sync above has the last word.
  if (rc < 0 && rc != -EINTR && rc != -ENODEV && rc != -ECONNABORTED)
    return PosixError(impl_->opts.mountpoint + ": FUSE session", -rc);
  return Status::Ok();
}

}  // namespace ds::fuse
