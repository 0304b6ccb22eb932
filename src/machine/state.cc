#include "machine/state.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <functional>

#include <nlohmann/json.hpp>

#include "io/device_claim.h"

namespace ds::machine {

namespace {

constexpr struct {
  Step step;
  const char* name;
} kSteps[] = {
    {Step::kPlanned, "planned"},          {Step::kUnmounted, "unmounted"},
    {Step::kEscrowed, "escrowed"},        {Step::kHeaderPlaced, "header-placed"},
    {Step::kEncrypting, "encrypting"},    {Step::kEncrypted, "encrypted"},
    {Step::kOpened, "opened"},            {Step::kMounted, "mounted"},
    {Step::kConfigured, "configured"},    {Step::kDisabling, "disabling"},
    {Step::kClosed, "closed"},            {Step::kDecrypting, "decrypting"},
    {Step::kDecrypted, "decrypted"},      {Step::kPlainMounted, "plain-mounted"},
    {Step::kDisabled, "disabled"},
};

}  // namespace

const char* StepName(Step s) {
  for (const auto& e : kSteps)
    if (e.step == s) return e.name;
  return "unknown";
}

Result<Step> ParseStep(const std::string& s) {
  for (const auto& e : kSteps)
    if (s == e.name) return e.step;
  return Corrupt("unknown step '" + s + "'");
}

StateDir::StateDir(Env& env, std::string dir) : env_(env), dir_(std::move(dir)) {
  while (dir_.size() > 1 && dir_.back() == '/') dir_.pop_back();
}

std::string StateDir::RecordPath(const std::string& name) const {
  return dir_ + "/volumes/" + name + ".json";
}
std::string StateDir::KeyPath(const std::string& name) const { return dir_ + "/keys/" + name + ".key"; }
std::string StateDir::HeaderPath(const std::string& name) const {
  return dir_ + "/headers/" + name + ".luks2";
}

Status StateDir::Prepare() {
  for (const std::string& d : {dir_, dir_ + "/volumes", dir_ + "/keys", dir_ + "/headers"})
    if (::mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) return PosixError(d, errno);
  return Status::Ok();
}

Status StateDir::Save(const VolumeRecord& r) {
  return env_.WriteFileAtomic(RecordPath(r.name), RecordToJson(r), 0600);
}

Result<std::vector<VolumeRecord>> StateDir::List() {
  std::vector<VolumeRecord> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_ + "/volumes", ec)) {
    const std::string file = e.path().filename().string();
    // Temp files of an interrupted atomic write are not records.
    if (file.size() < 6 || file.compare(file.size() - 5, 5, ".json") != 0) continue;
    DS_ASSIGN_OR_RETURN(std::string text, env_.ReadFile(e.path().string(), 1 << 20));
    DS_ASSIGN_OR_RETURN(VolumeRecord r, RecordFromJson(text, e.path().string()));
    out.push_back(std::move(r));
  }
  std::sort(out.begin(), out.end(), [](const VolumeRecord& a, const VolumeRecord& b) {
    return a.mountpoint != b.mountpoint ? a.mountpoint < b.mountpoint : a.name < b.name;
  });
  return out;
}

Status StateDir::Forget(const std::string& name) {
  const std::string p = RecordPath(name);
  if (!env_.Exists(p)) return Status::Ok();
  return env_.Remove(p);
}

std::string RecordToJson(const VolumeRecord& r) {
  nlohmann::ordered_json j = {
      {"name", r.name},           {"device", r.device},     {"mountpoint", r.mountpoint},
      {"fstype", r.fstype},       {"mount_options", r.mount_options},
      {"header", r.header},       {"key_file", r.key_file}, {"resilience", r.resilience},
      {"secret_id", r.secret_id}, {"loop", r.loop},         {"step", StepName(r.step)},
      {"last_error", r.last_error},
  };
  if (r.os) j["os"] = true;
  if (!r.uuid.empty()) j["uuid"] = r.uuid;
  if (r.lvm) j["lvm"] = true;
  if (r.fstab)
    j["fstab"] = {{"spec", r.fstab->spec},       {"file", r.fstab->file},
                  {"vfstype", r.fstab->vfstype}, {"options", r.fstab->options},
                  {"freq", r.fstab->freq},       {"passno", r.fstab->passno}};
  j["run"] = {{"index", r.run_index}, {"size", r.run_size}};
  j["rate"] = {{"pid", r.rate.pid},     {"done", r.rate.done},   {"total", r.rate.total},
               {"mib_s", r.rate.mib_s}, {"eta_s", r.rate.eta_s}, {"updated", r.rate.updated}};
  return j.dump(2) + "\n";
}

Result<VolumeRecord> RecordFromJson(const std::string& text, const std::string& what) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return Corrupt(what + ": not a JSON object");
  VolumeRecord r;
  try {
    r.name = j.at("name").get<std::string>();
    r.device = j.at("device").get<std::string>();
    r.mountpoint = j.at("mountpoint").get<std::string>();
    r.fstype = j.at("fstype").get<std::string>();
    r.mount_options = j.value("mount_options", "");
    r.header = j.at("header").get<std::string>();
    r.key_file = j.at("key_file").get<std::string>();
    r.resilience = j.value("resilience", "checksum");
    r.secret_id = j.value("secret_id", "");
    r.loop = j.value("loop", "");
    r.last_error = j.value("last_error", "");
    r.os = j.value("os", false);
    r.uuid = j.value("uuid", "");
    r.lvm = j.value("lvm", false);
    DS_ASSIGN_OR_RETURN(r.step, ParseStep(j.at("step").get<std::string>()));
    if (j.contains("fstab")) {
      const auto& f = j["fstab"];
      FstabEntry e;
      e.spec = f.at("spec").get<std::string>();
      e.file = f.at("file").get<std::string>();
      e.vfstype = f.at("vfstype").get<std::string>();
      e.options = f.at("options").get<std::string>();
      e.freq = f.at("freq").get<int>();
      e.passno = f.at("passno").get<int>();
      r.fstab = e;
    }
    if (j.contains("run")) {
      r.run_index = j["run"].value("index", 0);
      r.run_size = j["run"].value("size", 0);
    }
    if (j.contains("rate")) {
      const auto& t = j["rate"];
      r.rate.pid = t.value("pid", int64_t(0));
      r.rate.done = t.value("done", uint64_t(0));
      r.rate.total = t.value("total", uint64_t(0));
      r.rate.mib_s = t.value("mib_s", 0.0);
      r.rate.eta_s = t.value("eta_s", 0.0);
      r.rate.updated = t.value("updated", int64_t(0));
    }
  } catch (const nlohmann::json::exception& e) {
    return Corrupt(what + ": " + e.what());
  }
  if (r.name.empty() || r.name.find('/') != std::string::npos)
    return Corrupt(what + ": bad volume name '" + r.name + "'");
  return r;
}

MachineLock::~MachineLock() {
  if (fd_ >= 0) ::close(fd_);  // closing the last descriptor drops the flock
}

std::string MachineLock::Holder(const std::string& path) {
  // Held or not is asked of the kernel's lock table (/proc/locks), not by trying the lock: a
  // test lock, however brief, could make a concurrent `--no-wait` run fail for nothing.
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return "";
  const bool held = !FlockHolderPids(st.st_dev, st.st_ino).empty();
  if (!held) return "";
  std::string who;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd >= 0) {
    char buf[512];
    ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
    if (n > 0) who.assign(buf, size_t(n));
    ::close(fd);
  }
  while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
  // "PID COMMAND" -> "pid PID (COMMAND)"
  size_t sp = who.find(' ');
  if (sp != std::string::npos) return "pid " + who.substr(0, sp) + " (" + who.substr(sp + 1) + ")";
  if (!who.empty()) return "pid " + who;
  return "another process";
}

Result<MachineLock> MachineLock::Acquire(const std::string& path, const std::string& command,
                                         bool wait,
                                         const std::function<void(const std::string&)>& on_wait) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return PosixError(path, errno);
  MachineLock lock(fd);
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) return PosixError(path + ": flock", errno);
    std::string who = Holder(path);
    if (who.empty()) who = "another process";
    if (!wait)
      return Busy("another diskseal run holds the machine lock " + path + ": " + who +
                  "; wait for it to finish (or run without --no-wait to wait)");
    if (on_wait) on_wait(who);
    while (::flock(fd, LOCK_EX) != 0)
      if (errno != EINTR) return PosixError(path + ": flock", errno);
  }
  // Only the holder writes the file, and only while holding the lock; readers take a shared
  // lock attempt first, so a free lock is never reported with a stale holder.
  std::string rec = std::to_string(::getpid()) + " " + command + "\n";
  if (::ftruncate(fd, 0) != 0) return PosixError(path, errno);
  if (::pwrite(fd, rec.data(), rec.size(), 0) != ssize_t(rec.size())) return PosixError(path, errno);
  return lock;
}

}  // namespace ds::machine
