#include "fuse/run_dir.h"

#include <fcntl.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "util/bytes.h"

namespace ds::fuse {

namespace fs = std::filesystem;

Status ValidateVolumeName(const std::string& name) {
  if (name.empty() || name.size() > 127)
    return InvalidArgument("volume name '" + name + "' must be 1-127 characters long");
  if (name[0] == '.' || name[0] == '-')
    return InvalidArgument("volume name '" + name + "' must not start with '.' or '-'");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '+' || c == '-';
    if (!ok)
      return InvalidArgument("volume name '" + name + "' may contain only A-Z a-z 0-9 . _ + -");
  }
  return Status::Ok();
}

RunDir::RunDir(Env& env, std::string dir) : env_(env), dir_(std::move(dir)) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
}

std::string RunDir::StatePath(const std::string& name) const {
  return dir_ + "/.state/" + name + ".json";
}
std::string RunDir::LogPath(const std::string& name) const {
  return dir_ + "/.state/" + name + ".log";
}

Status RunDir::Prepare() {
  for (const std::string& d : {dir_, dir_ + "/.state"}) {
    if (::mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) return PosixError(d, errno);
  }
  return Status::Ok();
}

Status RunDir::Save(const Mapping& m) {
  nlohmann::ordered_json j = {
      {"name", m.name},   {"device", m.device}, {"header", m.header},
      {"uuid", m.uuid},   {"file", m.file},     {"pid", m.pid},
      {"pid_start", m.pid_start}, {"size", m.size}, {"read_only", m.read_only},
      {"error", m.error}};
  return env_.WriteFileAtomic(StatePath(m.name), j.dump(2) + "\n", 0600);
}

Result<std::optional<Mapping>> RunDir::Find(const std::string& name) {
  DS_RETURN_IF_ERROR(ValidateVolumeName(name));
  const std::string path = StatePath(name);
  if (!env_.Exists(path)) return std::optional<Mapping>();
  DS_ASSIGN_OR_RETURN(std::string text, env_.ReadFile(path, 1 << 20));
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Corrupt(path + ": not a JSON object");
  Mapping m;
  try {
    m.name = j.at("name").get<std::string>();
    m.device = j.at("device").get<std::string>();
    m.header = j.value("header", "");
    m.uuid = j.value("uuid", "");
    m.file = j.at("file").get<std::string>();
    m.pid = j.at("pid").get<int64_t>();
    m.pid_start = j.at("pid_start").get<uint64_t>();
    m.size = j.value("size", uint64_t(0));
    m.read_only = j.value("read_only", false);
    m.error = j.value("error", "");
  } catch (const nlohmann::json::exception& e) {
    return Corrupt(path + ": " + e.what());
  }
  if (m.name != name) return Corrupt(path + ": records volume '" + m.name + "'");
  return std::optional<Mapping>(std::move(m));
}

Result<std::vector<Mapping>> RunDir::List(std::vector<std::string>* bad) {
  std::vector<Mapping> out;
  std::error_code ec;
  fs::directory_iterator it(dir_ + "/.state", ec);
  if (ec) {
    if (ec == std::errc::no_such_file_or_directory) return out;
    return PosixError(dir_ + "/.state", ec.value());
  }
  for (const auto& e : it) {
    const std::string fname = e.path().filename().string();
    if (fname.size() <= 5 || fname.substr(fname.size() - 5) != ".json") continue;
    const std::string name = fname.substr(0, fname.size() - 5);
    auto m = Find(name);
    if (!m.ok() || !m->has_value()) {
      if (bad) bad->push_back(name);
      continue;
    }
    out.push_back(std::move(**m));
  }
  std::sort(out.begin(), out.end(),
            [](const Mapping& a, const Mapping& b) { return a.name < b.name; });
  return out;
}

Status RunDir::Forget(const std::string& name) {
  for (const std::string& p : {StatePath(name), LogPath(name)}) {
    if (::unlink(p.c_str()) != 0 && errno != ENOENT) return PosixError(p, errno);
  }
  return Status::Ok();
}

namespace {
// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string UnescapeMountField(const std::string& f) {
  std::string out;
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] == '\\' && i + 3 < f.size() && std::isdigit(uint8_t(f[i + 1]))) {
      out.push_back(char((f[i + 1] - '0') * 64 + (f[i + 2] - '0') * 8 + (f[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(f[i]);
    }
  }
  return out;
}
}  // namespace

std::vector<std::string> MountedRunDirs(const std::string& mountinfo) {
  std::vector<std::string> dirs;
  std::istringstream in(mountinfo);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, majmin, root, mp, field;
    if (!(f >> id >> parent >> majmin >> root >> mp)) continue;
    while (f >> field && field != "-") {
    }
    std::string fstype, source;
    if (!(f >> fstype >> source)) continue;
    if (fstype != "fuse.diskseal" || source.rfind("diskseal:", 0) != 0) continue;
    const std::string point = UnescapeMountField(mp);
    const size_t slash = point.rfind('/');
    if (slash == std::string::npos || slash == 0) continue;
    dirs.push_back(point.substr(0, slash));
  }
  std::sort(dirs.begin(), dirs.end());
  dirs.erase(std::unique(dirs.begin(), dirs.end()), dirs.end());
  return dirs;
}

std::vector<std::string> MountedRunDirs() {
  std::ifstream mi("/proc/self/mountinfo");
  std::stringstream text;
  text << mi.rdbuf();
  return MountedRunDirs(text.str());
}

uint64_t ProcessStartTime(int64_t pid) {
  if (pid <= 0) return 0;
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return 0;
  // comm (field 2) may contain spaces and parentheses: fields resume after the last ')'.
  size_t p = line.rfind(')');
  if (p == std::string::npos) return 0;
  std::istringstream rest(line.substr(p + 1));
  std::string field;
  // Fields 3..22; field 3 is the state, starttime is field 22.
  for (int i = 3; i <= 22; ++i) {
    if (!(rest >> field)) return 0;
    if (i == 3 && (field == "Z" || field == "X")) return 0;  // exited, not yet reaped
  }
  return ParseU64(field).value_or(0);
}

bool RunDir::IsAlive(const Mapping& m) {
  uint64_t start = ProcessStartTime(m.pid);
  return start != 0 && start == m.pid_start;
}

std::vector<std::string> LoopDevicesBackedBy(const std::string& file) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/block", ec)) {
    const std::string dev = e.path().filename().string();
    if (dev.rfind("loop", 0) != 0) continue;
    std::ifstream f(e.path() / "loop" / "backing_file");
    std::string backing;
    if (!std::getline(f, backing)) continue;
    if (backing == file || backing == file + " (deleted)") out.push_back("/dev/" + dev);
  }
  std::sort(out.begin(), out.end());
  return out;
}

Status DetachLoop(const std::string& loop_dev, const std::string& what) {
  // O_EXCL on a block device fails with EBUSY while it is mounted or claimed: then detaching
  // would only defer it (autoclear) and the volume could not be closed cleanly.
  int fd = ::open(loop_dev.c_str(), O_RDONLY | O_EXCL | O_CLOEXEC);
  if (fd < 0) {
    if (errno == EBUSY)
      return Busy(what + ": " + loop_dev + " is mounted or in use; unmount it first");
    if (errno == ENOENT || errno == ENXIO) return Status::Ok();  // already gone
    return PosixError(loop_dev, errno);
  }
  int rc = ::ioctl(fd, LOOP_CLR_FD, 0);
  int e = errno;
  ::close(fd);
  if (rc != 0 && e != ENXIO) return PosixError(loop_dev + ": detach", e);
  return Status::Ok();
}

Status RunDir::CleanupStale(const Mapping& m) {
  if (IsAlive(m))
    return Busy(m.name + ": the daemon (pid " + std::to_string(m.pid) + ") is still running");
  // Loop devices over a dead mount only return I/O errors; free the unused ones.
  for (const auto& loop : LoopDevicesBackedBy(m.file)) DetachLoop(loop, m.name).ok();
  if (::umount2(m.file.c_str(), MNT_DETACH) != 0 && errno != EINVAL && errno != ENOENT)
    return PosixError(m.file + ": unmount the stale FUSE mount", errno);
  if (::unlink(m.file.c_str()) != 0 && errno != ENOENT) return PosixError(m.file, errno);
  return Forget(m.name);
}

}  // namespace ds::fuse
