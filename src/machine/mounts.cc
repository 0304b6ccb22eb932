#include "machine/mounts.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "fuse/run_dir.h"
#include "machine/discovery.h"

namespace ds::machine {

namespace fs = std::filesystem;

namespace {

bool Under(const std::string& path, const std::string& mountpoint) {
  if (mountpoint == "/") return true;
  return path == mountpoint ||
         (path.size() > mountpoint.size() && path.compare(0, mountpoint.size(), mountpoint) == 0 &&
          path[mountpoint.size()] == '/');
}

std::string Comm(const std::string& pid) {
  std::ifstream f("/proc/" + pid + "/comm");
  std::string c;
  std::getline(f, c);
  return c;
}

struct Flag {
  const char* name;
  unsigned long set, clear;
};
constexpr Flag kFlags[] = {
    {"ro", MS_RDONLY, 0},          {"rw", 0, MS_RDONLY},
    {"nosuid", MS_NOSUID, 0},      {"suid", 0, MS_NOSUID},
    {"nodev", MS_NODEV, 0},        {"dev", 0, MS_NODEV},
    {"noexec", MS_NOEXEC, 0},      {"exec", 0, MS_NOEXEC},
    {"sync", MS_SYNCHRONOUS, 0},   {"async", 0, MS_SYNCHRONOUS},
    {"dirsync", MS_DIRSYNC, 0},    {"mand", MS_MANDLOCK, 0},
    {"noatime", MS_NOATIME, 0},    {"nodiratime", MS_NODIRATIME, 0},
    {"relatime", MS_RELATIME, 0},  {"strictatime", MS_STRICTATIME, 0},
    {"lazytime", MS_LAZYTIME, 0},  {"silent", MS_SILENT, 0},
};

// Adds the options of `list` to flags/data.
void AddOptions(const std::string& list, unsigned long& flags, std::string& data) {
  std::stringstream ss(list);
  for (std::string opt; std::getline(ss, opt, ',');) {
    if (opt.empty() || opt == "defaults" || opt == "nofail" || opt == "auto" || opt == "noauto" ||
        opt == "user" || opt == "nouser" || opt == "users" || opt == "_netdev" ||
        opt.rfind("x-", 0) == 0 || opt.rfind("comment=", 0) == 0)
      continue;
    bool is_flag = false;
    for (const auto& f : kFlags) {
      if (opt == f.name) {
        flags = (flags | f.set) & ~f.clear;
        is_flag = true;
        break;
      }
    }
    if (is_flag) continue;
    if (!data.empty()) data += ",";
    data += opt;
  }
}

}  // namespace

std::vector<std::string> MountHolders(const std::string& mountpoint) {
  std::vector<std::string> out;
  std::error_code ec;
  const std::string self = std::to_string(::getpid());
  for (const auto& p : fs::directory_iterator("/proc", ec)) {
    const std::string pid = p.path().filename().string();
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos || pid == self)
      continue;
    bool holds = false;
    for (const char* link : {"cwd", "root", "exe"}) {
      std::error_code e2;
      auto target = fs::read_symlink(p.path() / link, e2);
      if (!e2 && Under(target.string(), mountpoint) && !(std::string(link) == "root" && mountpoint == "/"))
        holds = true;
    }
    std::error_code e3;
    for (const auto& fd : fs::directory_iterator(p.path() / "fd", e3)) {
      if (holds) break;
      std::error_code e4;
      auto target = fs::read_symlink(fd.path(), e4);
      if (!e4 && Under(target.string(), mountpoint)) holds = true;
    }
    if (holds) out.push_back("pid " + pid + " (" + Comm(pid) + ")");
  }
  return out;
}

Status UnmountFs(const std::string& mountpoint) {
  if (::umount2(mountpoint.c_str(), 0) == 0) return Status::Ok();
  int e = errno;
  if (e != EBUSY) return PosixError("umount " + mountpoint, e);
  auto holders = MountHolders(mountpoint);
  std::string who;
  for (const auto& h : holders) who += (who.empty() ? "" : ", ") + h;
  return Busy(mountpoint + ": target is busy, cannot unmount it: " +
              (who.empty() ? std::string("no process holds a file there; a mount below it, a swap file or "
                                         "an NFS export may")
                           : "held by " + who) +
              ". Stop these, then run the command again");
}

Status MountFs(const std::string& source, const std::string& mountpoint, const std::string& fstype,
             const std::string& vfs_options, const std::string& fs_options) {
  unsigned long flags = 0;
  std::string data;
  AddOptions(vfs_options, flags, data);
  AddOptions(fs_options, flags, data);
  if (::mount(source.c_str(), mountpoint.c_str(), fstype.c_str(), flags,
              data.empty() ? nullptr : data.c_str()) != 0)
    return PosixError("mount " + source + " on " + mountpoint + " (" + fstype +
                          (data.empty() ? "" : ", " + data) + ")",
                      errno);
  return Status::Ok();
}

Result<std::string> MountedSource(const std::string& mountpoint) {
  std::ifstream f("/proc/self/mountinfo");
  std::stringstream ss;
  ss << f.rdbuf();
  DS_ASSIGN_OR_RETURN(auto mounts, ParseMountinfo(ss.str()));
  std::string src;
  for (const auto& m : mounts)
    if (m.mountpoint == mountpoint) src = m.source;  // later lines are mounted on top
  return src;
}

Result<std::string> AttachLoop(const std::string& file) {
  char real[PATH_MAX];
  const std::string canon = ::realpath(file.c_str(), real) ? std::string(real) : file;
  auto existing = fuse::LoopDevicesBackedBy(canon);
  if (!existing.empty()) return existing.front();
  int ctl = ::open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) return PosixError("/dev/loop-control", errno);
  int backing = ::open(canon.c_str(), O_RDWR | O_CLOEXEC);
  if (backing < 0) {
    int e = errno;
    ::close(ctl);
    return PosixError(canon, e);
  }
  // Another process may take the free device between GET_FREE and CONFIGURE: then try the next.
  Status last = IOError(canon + ": no free loop device");
  for (int attempt = 0; attempt < 16; ++attempt) {
    int n = ::ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) {
      last = PosixError("/dev/loop-control: get free", errno);
      break;
    }
    const std::string dev = "/dev/loop" + std::to_string(n);
    int fd = ::open(dev.c_str(), O_RDWR | O_CLOEXEC);
    if (fd < 0) {
      last = PosixError(dev, errno);
      continue;
    }
    struct loop_config cfg;
    std::memset(&cfg, 0, sizeof cfg);
    cfg.fd = uint32_t(backing);
    std::strncpy(reinterpret_cast<char*>(cfg.info.lo_file_name), canon.c_str(), LO_NAME_SIZE - 1);
    int rc = ::ioctl(fd, LOOP_CONFIGURE, &cfg);
    int e = errno;
    ::close(fd);
    if (rc == 0) {
      ::close(backing);
      ::close(ctl);
      return dev;
    }
    last = PosixError(dev + ": attach " + canon, e);
    if (e != EBUSY) break;
  }
  ::close(backing);
  ::close(ctl);
  return last;
}

}  // namespace ds::machine
