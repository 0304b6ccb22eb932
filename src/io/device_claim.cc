#include "io/device_claim.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <optional>
#include <mutex>
#include <set>
#include <sstream>

namespace ds {

namespace {

std::string DevNum(dev_t d) { return std::to_string(major(d)) + ":" + std::to_string(minor(d)); }

std::string FileKey(unsigned maj, unsigned min, uint64_t ino) {
  return "file-" + std::to_string(maj) + ":" + std::to_string(min) + "-" + std::to_string(ino);
}

// The whole of a small /proc or /sys file ("" when it cannot be read).
std::string ReadRaw(const std::string& path, size_t max = 64 * 1024) {
  std::string out;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return out;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, size_t(n));
    if (out.size() >= max) break;
  }
  ::close(fd);
  return out;
}

std::string ReadSmall(const std::string& path) {
  std::string s = ReadRaw(path);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::vector<std::string> List(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = ::opendir(dir.c_str())) {
    while (dirent* e = ::readdir(d))
      if (e->d_name[0] != '.') out.emplace_back(e->d_name);
    ::closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string Canonical(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

// A loop device's backing file identity, as the kernel encodes it (new_encode_dev).
struct LoopStatus {
  unsigned maj = 0, min = 0;
  uint64_t ino = 0;
  std::string file;
};

// nullopt when `fd` is not an attached loop device.
std::optional<LoopStatus> GetLoopStatus(int fd) {
  loop_info64 li{};
  if (::ioctl(fd, LOOP_GET_STATUS64, &li) != 0) return std::nullopt;
  LoopStatus s;
  const uint64_t d = li.lo_device;
  s.maj = unsigned((d & 0xfff00) >> 8);
  s.min = unsigned((d & 0xff) | ((d >> 12) & 0xfff00));
  s.ino = li.lo_inode;
  s.file.assign(reinterpret_cast<const char*>(li.lo_file_name),
                strnlen(reinterpret_cast<const char*>(li.lo_file_name), sizeof li.lo_file_name));
  return s;
}

bool IsLoopMajor(dev_t d) { return major(d) == 7; }

// Every attached loop device: (/dev/loopN, its status).
std::vector<std::pair<std::string, LoopStatus>> AttachedLoops() {
  std::vector<std::pair<std::string, LoopStatus>> out;
  for (const auto& n : List("/sys/block")) {
    if (n.rfind("loop", 0) != 0) continue;
    struct stat st;
    if (::stat(("/sys/block/" + n + "/loop").c_str(), &st) != 0) continue;  // not attached
    const std::string dev = "/dev/" + n;
    int fd = ::open(dev.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) continue;
    if (auto s = GetLoopStatus(fd)) out.emplace_back(dev, *s);
    ::close(fd);
  }
  return out;
}

// Who holds block device `rdev`, for a message: mount points, swap, holder mappings.
std::string DescribeBlockUse(dev_t rdev) {
  std::set<std::string> nums = {DevNum(rdev)};
  const std::string sys = "/sys/dev/block/" + DevNum(rdev);
  for (const auto& n : List(sys)) {  // partitions of a whole disk
    std::string d = ReadSmall(sys + "/" + n + "/dev");
    struct stat st;
    if (!d.empty() && ::stat((sys + "/" + n + "/partition").c_str(), &st) == 0) nums.insert(d);
  }
  std::ifstream mi("/proc/self/mountinfo");
  for (std::string line; std::getline(mi, line);) {
    // "36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw"
    std::istringstream f(line);
    std::string id, parent, num, root, where;
    if (f >> id >> parent >> num >> root >> where && nums.count(num)) return "mounted on " + where;
  }
  std::ifstream sw("/proc/swaps");
  std::string line;
  std::getline(sw, line);  // header
  while (std::getline(sw, line)) {
    std::istringstream f(line);
    std::string p;
    struct stat st;
    if (f >> p && ::stat(p.c_str(), &st) == 0 && S_ISBLK(st.st_mode) && st.st_rdev == rdev)
      return "in use as swap";
  }
  for (const auto& h : List(sys + "/holders")) {
    std::string dm = ReadSmall("/sys/block/" + h + "/dm/name");
    return "held by " + (dm.empty() ? h : "/dev/mapper/" + dm + " (" + h + ")");
  }
  return "open exclusively by another program";
}

// "" when the kernel lets us open `path` (a block device) exclusively right now, else why not.
std::string BlockUse(const std::string& path, dev_t rdev) {
  int fd = ::open(path.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC | O_NONBLOCK);
  if (fd >= 0) {
    ::close(fd);
    return "";
  }
  return errno == EBUSY ? DescribeBlockUse(rdev) : "";
}

bool SwapFileIs(dev_t dev, ino_t ino) {
  std::ifstream sw("/proc/swaps");
  std::string line;
  std::getline(sw, line);
  while (std::getline(sw, line)) {
    std::istringstream f(line);
    std::string p;
    struct stat st;
    if (f >> p && ::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == dev &&
        st.st_ino == ino)
      return true;
  }
  return false;
}

struct Entry {
  int fd = -1;
  ClaimMode mode = ClaimMode::kShared;
  int refs = 0;
};

std::mutex& RegistryMutex() {
  static std::mutex mu;
  return mu;
}
std::map<std::string, Entry>& Registry() {
  static auto* r = new std::map<std::string, Entry>;  // never destroyed: claims may outlive statics
  return *r;
}

// The parent of process `pid` (0 when it is gone): the field after the command in /proc/PID/stat,
// whose command may itself hold spaces and parentheses.
int ParentPid(int pid) {
  const std::string stat = ReadRaw("/proc/" + std::to_string(pid) + "/stat");
  const size_t end = stat.rfind(')');
  int ppid = 0;
  if (end == std::string::npos || std::sscanf(stat.c_str() + end + 1, " %*c %d", &ppid) != 1) return 0;
  return ppid;
}

// Every other process holding the lock file open or locked, as "CMDLINE (pid N)".
std::string DescribeHolders(int lock_fd) {
  struct stat ls;
  if (::fstat(lock_fd, &ls) != 0) return "another process";
  std::set<int> pids;
  for (int p : FlockHolderPids(ls.st_dev, ls.st_ino)) pids.insert(p);
  // flock records the process that took the lock; a child that inherited it (the view's daemon)
  // only shows as a descriptor on the file.
  for (const auto& n : List("/proc")) {
    if (!std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    const std::string fds = "/proc/" + n + "/fd";
    for (const auto& fd : List(fds)) {
      struct stat st;
      if (::stat((fds + "/" + fd).c_str(), &st) == 0 && st.st_dev == ls.st_dev && st.st_ino == ls.st_ino) {
        pids.insert(std::stoi(n));
        break;
      }
    }
  }
  pids.erase(int(::getpid()));
  std::map<int, std::string> cmds;
  for (int p : pids) cmds[p] = ProcessCommandLine(p);
  std::string out;
  int shown = 0;
  for (const auto& [p, cmd] : cmds) {
    if (cmd.empty()) continue;  // gone, or the locker that forked the real holder
    // A fork of a holder shown (an online run's guardian) is the same owner, not a second one.
    if (auto parent = cmds.find(ParentPid(p)); parent != cmds.end() && parent->second == cmd) continue;
    if (shown++ == 3) {
      out += " and others";
      break;
    }
    out += (out.empty() ? "" : ", ") + cmd + " (pid " + std::to_string(p) + ")";
  }
  return out.empty() ? "another diskseal process" : out;
}

Status CheckWritable(const std::string& path, const DeviceIdentity& id) {
  if (id.block) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return PosixError(path, errno);
    int ro = 0;
    int rc = ::ioctl(fd, BLKROGET, &ro);
    ::close(fd);
    if (rc == 0 && ro)
      return PermissionDenied(path + ": the device is read-only (losetup -r or blockdev --setro); "
                              "nothing was written");
    return Status::Ok();
  }
  struct statvfs vs;
  if (::statvfs(path.c_str(), &vs) == 0 && (vs.f_flag & ST_RDONLY))
    return PermissionDenied(path + ": on a read-only filesystem; nothing was written");
  if (::access(path.c_str(), W_OK) != 0)
    return PermissionDenied(path + ": not writable (" + std::strerror(errno) + "); nothing was written");
  return Status::Ok();
}

}  // namespace

Result<DeviceIdentity> IdentifyDevice(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return PosixError(path, errno);
  DeviceIdentity id;
  if (S_ISREG(st.st_mode)) {
    id.key = FileKey(major(st.st_dev), minor(st.st_dev), st.st_ino);
    return id;
  }
  if (!S_ISBLK(st.st_mode)) return InvalidArgument(path + ": not a regular file or block device");
  id.block = true;
  id.rdev = st.st_rdev;
  id.key = "blk-" + DevNum(st.st_rdev);
  if (IsLoopMajor(st.st_rdev)) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd >= 0) {
      if (auto s = GetLoopStatus(fd)) {
        id.key = FileKey(s->maj, s->min, s->ino);
        id.backing = s->file;
      }
      ::close(fd);
    }
  }
  return id;
}

// True when block device `rdev` is held only by mappings named in `allowed` (at least one).
bool HeldOnlyBy(dev_t rdev, const std::vector<std::string>& allowed) {
  if (allowed.empty()) return false;
  const std::string sys = "/sys/dev/block/" + DevNum(rdev);
  const auto holders = List(sys + "/holders");
  if (holders.empty()) return false;
  for (const auto& h : holders) {
    const std::string dm = ReadSmall("/sys/block/" + h + "/dm/name");
    if (std::find(allowed.begin(), allowed.end(), dm) == allowed.end()) return false;
  }
  return true;
}

Result<std::string> KernelUse(const std::string& path, const std::vector<std::string>& allowed) {
  DS_ASSIGN_OR_RETURN(DeviceIdentity id, IdentifyDevice(path));
  if (id.block) {
    std::string use = BlockUse(path, id.rdev);
    if (!use.empty() && use.rfind("held by ", 0) == 0 && HeldOnlyBy(id.rdev, allowed)) use.clear();
    if (!use.empty()) return use;
    if (id.backing.empty()) return std::string();
  } else {
    struct stat st;
    if (::stat(path.c_str(), &st) == 0 && SwapFileIs(st.st_dev, st.st_ino)) return std::string("in use as swap");
  }
  // A file, or a loop device over one: every loop device over the same file counts.
  for (const auto& [loop, s] : AttachedLoops()) {
    if (FileKey(s.maj, s.min, s.ino) != id.key) continue;
    struct stat ls;
    if (::stat(loop.c_str(), &ls) != 0 || (id.block && ls.st_rdev == id.rdev)) continue;
    std::string use = BlockUse(loop, ls.st_rdev);
    if (!use.empty()) return (id.block ? "its backing file also backs " : "backs ") + loop + ", which is " + use;
  }
  return std::string();
}

std::vector<int> FlockHolderPids(dev_t dev, ino_t ino) {
  char key[64];
  std::snprintf(key, sizeof key, "%02x:%02x:%lu", major(dev), minor(dev), static_cast<unsigned long>(ino));
  std::vector<int> pids;
  std::ifstream locks("/proc/locks");
  for (std::string line; std::getline(locks, line);) {
    // "1: FLOCK  ADVISORY  WRITE 6047 fe:00:10952977 0 EOF"; waiters are "1: -> FLOCK ...".
    std::istringstream in(line);
    std::vector<std::string> w;
    for (std::string x; in >> x;) w.push_back(x);
    if (w.size() >= 6 && w[1] == "FLOCK" && w[5] == key) pids.push_back(std::atoi(w[4].c_str()));
  }
  return pids;
}

std::string ProcessCommandLine(int pid, size_t max) {
  std::string raw = ReadRaw("/proc/" + std::to_string(pid) + "/cmdline");
  while (!raw.empty() && raw.back() == '\0') raw.pop_back();
  std::replace(raw.begin(), raw.end(), '\0', ' ');
  // The program by its name, not its build path.
  size_t sp = raw.find(' ');
  size_t slash = raw.rfind('/', sp == std::string::npos ? raw.size() : sp);
  if (slash != std::string::npos) raw.erase(0, slash + 1);
  if (raw.size() > max) raw = raw.substr(0, max) + "...";
  return raw;
}

std::string DeviceClaim::LockDir() {
  const char* d = std::getenv("DISKSEAL_LOCK_DIR");
  return d && *d ? std::string(d) : std::string("/run/diskseal/locks");
}

Result<DeviceClaim> DeviceClaim::Acquire(const std::string& path, const ClaimOptions& opts) {
  DS_ASSIGN_OR_RETURN(DeviceIdentity id, IdentifyDevice(path));
  const std::string name = path == Canonical(path) ? path : path + " (" + Canonical(path) + ")";
  if (opts.write_device) DS_RETURN_IF_ERROR(CheckWritable(path, id));
  std::lock_guard<std::mutex> lock(RegistryMutex());
  auto& reg = Registry();
  if (auto it = reg.find(id.key); it != reg.end()) {
    if (it->second.mode == ClaimMode::kShared && opts.mode == ClaimMode::kExclusive)
      return Busy(name + ": this diskseal process already holds it read-only; it cannot also write it");
    ++it->second.refs;
    return DeviceClaim(id.key);
  }
  const std::string dir = LockDir();
  for (size_t i = 1; i <= dir.size(); ++i)
    if (i == dir.size() || dir[i] == '/')
      if (::mkdir(dir.substr(0, i).c_str(), 0700) != 0 && errno != EEXIST)
        return PosixError(dir.substr(0, i) + ": creating the device lock directory", errno);
  const std::string file = dir + "/" + id.key;
  int fd = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(file, errno);
  const int how = opts.mode == ClaimMode::kExclusive ? LOCK_EX : LOCK_SH;
  while (::flock(fd, how | LOCK_NB) != 0) {
    if (errno == EINTR) continue;
    int e = errno;
    if (e != EWOULDBLOCK) {
      ::close(fd);
      return PosixError(file + ": flock", e);
    }
    std::string who = DescribeHolders(fd);
    ::close(fd);
    return Busy(name + ": in use by " + who + "; diskseal allows one owner per device");
  }
  auto use = KernelUse(path, opts.allowed_holders);
  if (!use.ok() || !use->empty()) {
    ::close(fd);
    if (!use.ok()) return use.status();
    return Busy(name + ": " + *use + "; refusing to touch it");
  }
  reg[id.key] = Entry{fd, opts.mode, 1};
  return DeviceClaim(id.key);
}

DeviceClaim::~DeviceClaim() {
  if (key_.empty()) return;
  std::lock_guard<std::mutex> lock(RegistryMutex());
  auto& reg = Registry();
  auto it = reg.find(key_);
  if (it == reg.end()) return;
  if (--it->second.refs == 0) {
    ::close(it->second.fd);  // the last descriptor of this process: the flock goes with it
    reg.erase(it);
  }
}

}  // namespace ds
