#include "fuse/daemon.h"

#include <fcntl.h>
#include <malloc.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "fuse/file_server.h"
#include "fuse/gated_device.h"
#include "fuse/online_control.h"

namespace ds::fuse {

namespace {

// The readiness pipe carries one message from the child: 'R' (ready) or 'E', a code byte and the
// error text.
void WriteAll(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    p += w;
    n -= size_t(w);
  }
}

[[noreturn]] void ChildFail(int fd, const Status& s) {
  char hdr[2] = {'E', char(s.code())};
  WriteAll(fd, hdr, 2);
  WriteAll(fd, s.message().data(), s.message().size());
  ::_exit(1);
}

// Runs in the forked child. Never returns.
[[noreturn]] void RunChild(int ready_fd, RunDir& run, BlockDevice* view, const StartRequest& req) {
  ::setsid();
  // The daemon is not the command that forked it: under its own name, `ps` and doctor's check for
  // a concurrent `diskseal encrypt/enable` do not mistake a serving view for one.
  ::prctl(PR_SET_NAME, "diskseal-view", 0, 0, 0);
  if (::chdir("/") != 0) {
    // Not fatal: the daemon touches only absolute paths.
  }
  // mlock is not inherited across fork. Lock what is mapped now (the cipher's key schedule) and
  // everything mapped later as it is touched (worker stacks, request buffers).
  ::mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT);
  // Request buffers are up to 1 MiB, above glibc's mmap threshold: each request would map, fault
  // in (and lock) and unmap fresh pages. Keep such buffers in the heap and reuse them instead.
  ::mallopt(M_MMAP_THRESHOLD, 8 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 64 << 20);

  ServeOptions so;
  so.mountpoint = run.FilePath(req.name);
  so.fsname = "diskseal:" + req.name;
  so.read_only = req.read_only;
  so.atomic_unit = req.atomic_unit;
  so.max_threads = req.threads;
  // The served view follows the layout an online operation leaves behind (fuse/gated_device.h).
  GatedDevice gated(view);
  auto server = FileServer::Mount(&gated, so);
  if (!server.ok()) ChildFail(ready_fd, server.status());
  Status s = (*server)->HandleSignals();
  if (!s.ok()) ChildFail(ready_fd, s);
  std::unique_ptr<ControlServer> control;
  if (!req.read_only && req.env) {
    ControlConfig cc;
    cc.env = req.env;
    cc.name = req.name;
    cc.device = req.device;
    cc.header = req.header;
    cc.atomic_unit = req.atomic_unit;
    cc.view = &gated;
    auto started = ControlServer::Start(ControlSocketPath(run, req.name), std::move(cc));
    if (!started.ok()) ChildFail(ready_fd, started.status());
    control = std::move(*started);
  }

  Mapping m;
  m.name = req.name;
  m.device = req.device;
  m.header = req.header;
  m.uuid = req.uuid;
  m.file = so.mountpoint;
  m.pid = ::getpid();
  m.pid_start = ProcessStartTime(m.pid);
  m.size = view->Size();
  m.read_only = req.read_only;
  s = run.Save(m);
  if (!s.ok()) ChildFail(ready_fd, s);

  // From here on nothing may write to the caller's terminal or pipes: a test harness or a shell
  // waiting for the CLI's output would otherwise wait for the daemon too.
  int null_fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  int log_fd = ::open(run.LogPath(req.name).c_str(),
                      O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
  if (null_fd >= 0) {
    ::dup2(null_fd, 0);
    ::dup2(null_fd, 1);
  }
  ::dup2(log_fd >= 0 ? log_fd : null_fd, 2);
  WriteAll(ready_fd, "R", 1);
  ::close(ready_fd);

  s = (*server)->Serve();
  // An operation still running stops at its next commit point (its data is synced there).
  control.reset();
  server->reset();
  if (!s.ok()) {
    // Keep the record with the error so `close` can report that data may not be on disk.
    m.error = s.message();
    std::fprintf(stderr, "diskseal: %s: %s\n", req.name.c_str(), s.message().c_str());
    run.Save(m).ok();
    ::_exit(1);
  }
  ::unlink(so.mountpoint.c_str());
  run.Forget(req.name).ok();
  ::_exit(0);
}

}  // namespace

Result<Mapping> StartDaemon(RunDir& run, BlockDevice* view, const StartRequest& req) {
  DS_RETURN_IF_ERROR(ValidateVolumeName(req.name));
  DS_RETURN_IF_ERROR(CheckFuseAvailable());
  DS_RETURN_IF_ERROR(run.Prepare());
  const std::string file = run.FilePath(req.name);
  // The mount point: an empty regular file that the mount covers. O_EXCL makes a concurrent open
  // of the same name fail here rather than stack two mounts.
  int fd = ::open(file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    if (errno == EEXIST) return Busy(req.name + ": " + file + " already exists (name in use)");
    return PosixError(file, errno);
  }
  ::close(fd);

  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) {
    int e = errno;
    ::unlink(file.c_str());
    return PosixError("pipe", e);
  }
  std::fflush(nullptr);  // nothing buffered may be written twice
  pid_t pid = ::fork();
  if (pid < 0) {
    int e = errno;
    ::close(p[0]);
    ::close(p[1]);
    ::unlink(file.c_str());
    return PosixError("fork", e);
  }
  if (pid == 0) {
    ::close(p[0]);
    for (int inherited : req.close_in_child) ::close(inherited);
    RunChild(p[1], run, view, req);
  }
  ::close(p[1]);
  std::string msg;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(p[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    msg.append(buf, size_t(n));
  }
  ::close(p[0]);
  if (!msg.empty() && msg[0] == 'R') {
    auto m = run.Find(req.name);
    if (!m.ok()) return m.status();
    if (!m->has_value()) return Internal(req.name + ": the daemon did not record itself");
    return std::move(**m);
  }
  // The child failed before it was ready and has exited (or is exiting): reap it.
  int wstatus = 0;
  while (::waitpid(pid, &wstatus, 0) < 0 && errno == EINTR) {
  }
  ::unlink(file.c_str());
  run.Forget(req.name).ok();
  if (msg.size() >= 2 && msg[0] == 'E')
    return Status(Code(uint8_t(msg[1])), msg.substr(2)).WithContext(req.name);
  return Internal(req.name + ": the serving daemon exited before it was ready (status " +
                  std::to_string(wstatus) + ")");
}

namespace {

// Waits for a process that is not our child to exit (pidfd: no polling loop, no pid reuse race).
Status WaitForExit(const Mapping& m, int timeout_ms) {
  int pfd = int(::syscall(SYS_pidfd_open, pid_t(m.pid), 0));
  if (pfd < 0) {
    if (errno == ESRCH) return Status::Ok();
    return PosixError("pidfd_open " + std::to_string(m.pid), errno);
  }
  pollfd fds{pfd, POLLIN, 0};
  int rc;
  do {
    rc = ::poll(&fds, 1, timeout_ms);
  } while (rc < 0 && errno == EINTR);
  ::close(pfd);
  if (rc == 0)
    return Internal(m.name + ": the daemon (pid " + std::to_string(m.pid) +
                    ") did not exit after the unmount");
  return Status::Ok();
}

}  // namespace

Status StopDaemon(RunDir& run, const Mapping& m) {
  if (!RunDir::IsAlive(m)) return run.CleanupStale(m);
  for (const auto& loop : LoopDevicesBackedBy(m.file)) DS_RETURN_IF_ERROR(DetachLoop(loop, m.name));
  // The loop driver releases its backing file when its last opener goes; that can lag behind
  // LOOP_CLR_FD by a moment, so EBUSY is retried briefly before it is reported.
  int tries = 0;
  while (::umount2(m.file.c_str(), 0) != 0) {
    if (errno == EBUSY && ++tries < 50 && !LoopDevicesBackedBy(m.file).empty()) {
      ::usleep(100 * 1000);
      continue;
    }
    if (errno == EBUSY)
      return Busy(m.name + ": " + m.file + " is in use (held open by a program); close it first");
    if (errno == EINVAL) break;  // no longer mounted: the daemon is already on its way out
    return PosixError(m.file + ": unmount", errno);
  }
  DS_RETURN_IF_ERROR(WaitForExit(m, 120 * 1000));
  auto after = run.Find(m.name);
  if (after.ok() && after->has_value() && !(*after)->error.empty()) {
    std::string err = (*after)->error;
    ::unlink(m.file.c_str());
    run.Forget(m.name).ok();
    return IOError(m.name + ": the final flush failed, recent writes may be lost: " + err);
  }
  ::unlink(m.file.c_str());
  return run.Forget(m.name);
}

}  // namespace ds::fuse
