#include "online/memory_lock.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cerrno>
#include <cstdio>
#include <set>
#include <sstream>
#include <vector>

#include "io/block_device.h"

namespace ds::online {

namespace {

std::string DevName(dev_t d) { return std::to_string(major(d)) + ":" + std::to_string(minor(d)); }

// "MAJ:MIN" in `base` (16 in /proc/self/maps, 10 in mountinfo and sysfs).
std::optional<dev_t> ParseDev(const std::string& s, int base) {
  const size_t colon = s.find(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 >= s.size()) return std::nullopt;
  try {
    size_t a = 0, b = 0;
    const unsigned long maj = std::stoul(s.substr(0, colon), &a, base);
    const unsigned long min = std::stoul(s.substr(colon + 1), &b, base);
    if (a != colon || b != s.size() - colon - 1) return std::nullopt;
    return makedev(maj, min);
  } catch (...) {
    return std::nullopt;
  }
}

struct Mount {
  std::string fstype, source;
};

// mountinfo: "ID PARENT MAJ:MIN ROOT POINT OPTS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS".
std::vector<std::pair<dev_t, Mount>> ParseMountinfo(const std::string& text) {
  std::vector<std::pair<dev_t, Mount>> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::vector<std::string> w;
    for (std::string x; f >> x;) w.push_back(x);
    if (w.size() < 7) continue;
    auto dev = ParseDev(w[2], 10);
    size_t dash = 6;
    while (dash < w.size() && w[dash] != "-") ++dash;
    if (!dev || dash + 2 >= w.size()) continue;
    out.push_back({*dev, {w[dash + 1], w[dash + 2]}});
  }
  return out;
}

bool MemoryBacked(const std::string& fstype) {
  return fstype == "tmpfs" || fstype == "ramfs" || fstype == "rootfs" || fstype == "devtmpfs" ||
         fstype == "proc" || fstype == "sysfs";
}

}  // namespace

LockDecision DecideLockScope(const LockInputs& in) {
  {
    std::istringstream s(in.swaps);
    std::string line;
    std::getline(s, line);  // the header line
    while (std::getline(s, line))
      if (line.find_first_not_of(" \t") != std::string::npos) return {LockScope::kAll, "swap is active"};
  }
  const auto mounts = ParseMountinfo(in.mountinfo);
  std::set<dev_t> checked;
  std::istringstream maps(in.maps);
  std::string line;
  while (std::getline(maps, line)) {
    // "START-END PERMS OFFSET MAJ:MIN INODE [PATH]": inode 0 is anonymous memory.
    std::istringstream f(line);
    std::string range, perms, offset, dev_s, inode;
    if (!(f >> range >> perms >> offset >> dev_s >> inode)) return {LockScope::kAll, "unreadable maps line"};
    if (inode == "0") continue;
    auto dev = ParseDev(dev_s, 16);
    if (!dev) return {LockScope::kAll, "unreadable device in maps: " + dev_s};
    if (!checked.insert(*dev).second) continue;
    const std::string where = "a mapped file on " + DevName(*dev);
    if (major(*dev) != 0) {
      if (!in.may_wait_for_volume || in.may_wait_for_volume(*dev)) return {LockScope::kAll, where + ", on the volume"};
      continue;
    }
    // No block device of its own: the filesystem says where its data lives.
    const Mount* m = nullptr;
    for (const auto& [d, mount] : mounts)
      if (d == *dev) m = &mount;
    if (!m) return {LockScope::kAll, where + ", not in mountinfo"};
    if (MemoryBacked(m->fstype)) continue;
    if (m->fstype == "btrfs") return {LockScope::kAll, where + ", btrfs"};
    std::optional<dev_t> src;
    if (m->source.rfind("/dev/", 0) == 0 && in.block_device) src = in.block_device(m->source);
    if (!src) return {LockScope::kAll, where + ", " + m->fstype + " without a block device"};
    if (!in.may_wait_for_volume || in.may_wait_for_volume(*src)) return {LockScope::kAll, where + ", on the volume"};
  }
  return {LockScope::kOnFault, "no mapped file on the volume"};
}

LockDecision LockScopeFor(Env& env, dev_t top) {
  constexpr uint64_t kMax = 16u << 20;
  auto maps = env.ReadFile("/proc/self/maps", kMax);
  auto mountinfo = env.ReadFile("/proc/self/mountinfo", kMax);
  auto swaps = env.ReadFile("/proc/swaps", kMax);
  if (!maps.ok() || !mountinfo.ok() || !swaps.ok()) return {LockScope::kAll, "cannot read /proc"};
  // The volume and everything stacked on it, following sysfs's holders/ links.
  std::set<dev_t> stacked = {top};
  bool complete = true;
  for (std::vector<dev_t> todo = {top}; !todo.empty();) {
    const dev_t d = todo.back();
    todo.pop_back();
    auto names = env.ListDir("/sys/dev/block/" + DevName(d) + "/holders");
    if (!names.ok()) {
      complete = false;
      break;
    }
    for (const auto& n : *names) {
      auto text = env.ReadFile("/sys/class/block/" + n + "/dev", 64);
      auto h = text.ok() ? ParseDev(text->substr(0, text->find('\n')), 10) : std::nullopt;
      if (!h) {
        complete = false;
        continue;
      }
      if (stacked.insert(*h).second) todo.push_back(*h);
    }
  }
  if (!complete) return {LockScope::kAll, "cannot read the devices stacked on the volume"};
  LockInputs in;
  in.maps = std::move(*maps);
  in.mountinfo = std::move(*mountinfo);
  in.swaps = std::move(*swaps);
  in.may_wait_for_volume = [&](dev_t d) {
    if (stacked.count(d)) return true;
    constexpr unsigned kLoopMajor = 7;
    if (major(d) == kLoopMajor) return true;
    // A partition of a loop device has a major of its own (blkext): its disk says.
    auto link = env.ReadLink("/sys/dev/block/" + DevName(d));
    if (!link.ok()) return true;
    return link->find("/loop") != std::string::npos;
  };
  in.block_device = [](const std::string& path) -> std::optional<dev_t> {
    struct stat st;
    if (::stat(path.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return std::nullopt;
    return st.st_rdev;
  };
  return DecideLockScope(in);
}

bool RunsFrom(const std::string& path, const std::string& self_exe) {
  if (path.empty() || path[0] != '/') return false;
  if (path == self_exe) return true;
  const std::string base = path.substr(path.rfind('/') + 1);
  // The engine's own code and what it calls while a zone is held: the C and C++ runtimes, the
  // ciphers and hashes, libdevmapper for the switches. libcurl and what it pulls in (TLS, IDN,
  // LDAP, Kerberos ...) and SQLite serve the vault, which an online run never calls.
  for (const char* lib : {"ld-linux", "libc.so", "libm.so", "libstdc++.so", "libgcc_s.so", "libcrypto.so",
                          "libdevmapper.so", "libudev.so", "libselinux.so", "libargon2.so", "libpcre2"})
    if (base.rfind(lib, 0) == 0) return true;
  return false;
}

int LockMemory(Env& env, const LockDecision& d) {
  if (d.scope == LockScope::kAll) {
    if (::mlockall(MCL_CURRENT) != 0) return errno;
    return ::mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0 ? errno : 0;
  }
  if (::mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT) != 0) return errno;
  auto maps = env.ReadFile("/proc/self/maps", 16u << 20);
  auto exe = env.ReadLink("/proc/self/exe");
  if (!maps.ok() || !exe.ok()) return 0;  // only slower: the pages fault in as they are used
  std::istringstream in(*maps);
  std::string line;
  while (std::getline(in, line)) {
    unsigned long long start = 0, end = 0;
    const size_t slash = line.find('/');
    if (slash == std::string::npos || std::sscanf(line.c_str(), "%llx-%llx", &start, &end) != 2 || end <= start) continue;
    if (!RunsFrom(line.substr(slash), *exe)) continue;
    // A failure (RLIMIT_MEMLOCK) leaves these pages to fault in when used: as safe, slower.
    (void)::mlock(reinterpret_cast<void*>(uintptr_t(start)), size_t(end - start));
  }
  return 0;
}

}  // namespace ds::online
