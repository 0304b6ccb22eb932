#include "machine/doctor.h"

#include "machine/config.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <unordered_map>

#include "engine/volume_escrow.h"
#include "luks2/header_io.h"
#include "machine/state.h"

namespace ds::machine {

namespace {

constexpr uint64_t kMiB = 1u << 20;
// How many lines of evidence a finding shows before "... and N more": enough to act on, short
// enough to read on a machine with thousands of processes.
constexpr size_t kMaxEvidence = 12;

const char* const kChecks[] = {
    "open-files",    "concurrent-tools", "selinux",     "lvm-layout",      "memory",
    "nested-mounts", "filesystem-mode",  "header-space", "header-location", "shrink-space",
    "already-encrypted", "interrupted",  "kernel-support", "vault",       "no-targets",
    "volume-header", "initramfs",
};

std::string Mib(uint64_t bytes) { return std::to_string((bytes + kMiB / 2) / kMiB) + " MiB"; }

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t' || s.back() == '\0'))
    s.pop_back();
  return s;
}

std::string ReadSmall(const MachineRoot& root, const std::string& machine_path, uint64_t max = 1 << 20) {
  auto r = root.env->ReadFile(root.Path(machine_path), max);
  return r.ok() ? std::move(r).value() : std::string();
}

bool Under(const std::string& path, const std::string& dir) {
  if (dir == "/") return !path.empty() && path[0] == '/';
  return path.size() > dir.size() && path.compare(0, dir.size(), dir) == 0 && path[dir.size()] == '/';
}

std::string ParentDir(const std::string& p) {
  size_t s = p.rfind('/');
  return s == 0 || s == std::string::npos ? "/" : p.substr(0, s);
}

// Findings collected by the checks, with the evidence list capped.
class Findings {
 public:
  Finding& Add(std::string check, Severity sev, std::string volume, std::string message,
               std::string fix = "") {
    Finding f;
    f.check = std::move(check);
    f.severity = sev;
    f.volume = std::move(volume);
    f.message = std::move(message);
    f.fix = std::move(fix);
    list_.push_back(std::move(f));
    return list_.back();
  }
  static void Evidence(Finding& f, std::vector<std::string> lines) {
    size_t n = lines.size();
    if (n > kMaxEvidence) {
      lines.resize(kMaxEvidence);
      lines.push_back("... and " + std::to_string(n - kMaxEvidence) + " more");
    }
    f.evidence = std::move(lines);
  }
  std::vector<Finding> Take() { return std::move(list_); }

 private:
  std::vector<Finding> list_;
};

// Which mount a machine path is on: the deepest mount point above it (the last mount at a point
// hides the earlier ones, as the kernel does). O(depth) per lookup, so thousands of processes
// against hundreds of mounts stay cheap.
class MountMap {
 public:
  explicit MountMap(const std::vector<Mount>& mounts) {
    for (size_t i = 0; i < mounts.size(); ++i) by_point_[mounts[i].mountpoint] = int(i);
  }
  int Owner(std::string path) const {
    if (path.empty() || path[0] != '/') return -1;
    for (;;) {
      auto it = by_point_.find(path);
      if (it != by_point_.end()) return it->second;
      if (path == "/") return -1;
      path = ParentDir(path);
    }
  }

 private:
  std::unordered_map<std::string, int> by_point_;
};

// A process as /proc shows it, with the files it holds that matter to the checks.
struct Proc {
  int pid = 0;
  std::string comm;
  std::vector<std::string> argv;
  // (what, path): ("fd 7", "/data/x"), ("cwd", "/data"), ("maps", "/data/lib.so")
  std::vector<std::pair<std::string, std::string>> files;
  std::string Describe() const {
    return "pid " + std::to_string(pid) + " (" + comm + ")";
  }
};

std::string StripDeleted(std::string p) {
  constexpr std::string_view kDel = " (deleted)";
  if (p.size() > kDel.size() && p.compare(p.size() - kDel.size(), kDel.size(), kDel) == 0)
    p.resize(p.size() - kDel.size());
  return p;
}

// Reads every /proc/PID: command, argv, open files, cwd, root, exe and mapped files. A process
// that exits while we read it simply has fewer entries. Paths are as the process sees them: one
// in another mount namespace (a container) shows its own paths, matched as if they were ours.
std::vector<Proc> ScanProcs(const MachineRoot& root, int self_pid) {
  std::vector<Proc> procs;
  auto names = root.env->ListDir(root.Path("/proc"));
  if (!names.ok()) return procs;
  for (const auto& n : *names) {
    if (n.empty() || !std::all_of(n.begin(), n.end(), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    Proc p;
    p.pid = std::stoi(n);
    if (p.pid == self_pid) continue;
    std::string base = "/proc/" + n;
    p.comm = Trim(ReadSmall(root, base + "/comm", 4096));
    std::string cmd = ReadSmall(root, base + "/cmdline", 64 * 1024);
    for (size_t i = 0; i < cmd.size();) {
      size_t z = cmd.find('\0', i);
      if (z == std::string::npos) z = cmd.size();
      p.argv.push_back(cmd.substr(i, z - i));
      i = z + 1;
    }
    {
      auto fds = root.env->ListDir(root.Path(base + "/fd"));
      if (fds.ok())
        std::sort(fds->begin(), fds->end(), [](const std::string& a, const std::string& b) {
          return a.size() != b.size() ? a.size() < b.size() : a < b;  // numeric order
        });
      if (fds.ok())
        for (const auto& fd : *fds)
          if (auto l = root.env->ReadLink(root.Path(base + "/fd/" + fd)); l.ok() && !l->empty() && (*l)[0] == '/')
            p.files.emplace_back("fd " + fd, StripDeleted(*l));
      for (const char* what : {"cwd", "root", "exe"})
        if (auto l = root.env->ReadLink(root.Path(base + "/" + what)); l.ok() && !l->empty() && (*l)[0] == '/')
          p.files.emplace_back(what, StripDeleted(*l));
      std::string maps = ReadSmall(root, base + "/maps", 16 << 20);
      std::set<std::string> seen;
      std::istringstream in(maps);
      std::string line;
      while (std::getline(in, line)) {
        // address perms offset dev inode path
        std::istringstream f(line);
        std::string addr, perms, off, dev, inode, path;
        if (!(f >> addr >> perms >> off >> dev >> inode)) continue;
        std::getline(f, path);
        size_t s = path.find_first_not_of(' ');
        path = s == std::string::npos ? "" : StripDeleted(path.substr(s));
        if (path.empty() || path[0] != '/' || !seen.insert(path).second) continue;
        p.files.emplace_back("maps", path);
      }
    }
    procs.push_back(std::move(p));
  }
  std::sort(procs.begin(), procs.end(), [](const Proc& a, const Proc& b) { return a.pid < b.pid; });
  return procs;
}

struct Target {
  const Volume* volume = nullptr;
  uint32_t major = 0, minor = 0;
  std::vector<std::string> devs;  // device nodes that are this volume (and what it is built on)
};

class Doctor {
 public:
  Doctor(const MachineRoot& root, const Machine& m, const DoctorOptions& o)
      : root_(root), m_(m), o_(o), mounts_(m.mounts) {}

  Report Run() {
    Report r;
    ChooseTargets(r);
    procs_ = ScanProcs(root_, o_.self_pid);
    OpenFiles();
    ConcurrentTools();
    Selinux();
    Lvm();
    Memory();
    NestedMounts();
    FilesystemMode();
    HeaderSpace();
    OsHeaderLocation();
    Initramfs();
    Encrypted();
    Interrupted();
    r.open_mode = KernelSupport();
    if (o_.vault && !o_.vault->url.empty()) Vault();
    VolumeHeaders();
    r.findings = f_.Take();
    for (auto& x : r.findings)
      if (std::find(o_.ignore.begin(), o_.ignore.end(), x.check) != o_.ignore.end()) {
        x.severity = Severity::kInfo;  // kept visible: an ignored problem is still a problem
        x.message = "ignored (--ignore " + x.check + "): " + x.message;
      }
    std::stable_sort(r.findings.begin(), r.findings.end(), [](const Finding& a, const Finding& b) {
      return int(a.severity) < int(b.severity);
    });
    return r;
  }

 private:
  static std::string Name(const Volume& v) { return v.mountpoint.empty() ? v.dev : v.mountpoint; }

  void ChooseTargets(Report& r) {
    for (const auto& v : m_.volumes) {
      bool os = v.role == VolumeRole::kOs, data = v.role == VolumeRole::kData;
      bool want = (data && o_.volume_type != VolumeType::kOs) ||
                  (os && o_.volume_type != VolumeType::kData);
      if (!want) continue;
      if (!o_.only.empty() && std::find(o_.only.begin(), o_.only.end(), v.mountpoint) == o_.only.end())
        continue;
      Target t;
      t.volume = &v;
      if (v.block >= 0) {
        const BlockInfo& b = m_.blocks[size_t(v.block)];
        t.major = b.major;
        t.minor = b.minor;
        t.devs = {b.dev, "/dev/" + b.name};
        for (const auto& s : b.slaves) t.devs.push_back("/dev/" + s);
      } else {
        t.devs = {v.dev};
      }
      targets_.push_back(std::move(t));
      r.targets.push_back(Name(v));
    }
    mount_target_.assign(m_.mounts.size(), -1);
    for (size_t i = 0; i < m_.mounts.size(); ++i) {
      const Mount& mt = m_.mounts[i];
      for (size_t t = 0; t < targets_.size(); ++t) {
        const Target& tg = targets_[t];
        bool same = (tg.major || tg.minor) ? (mt.major == tg.major && mt.minor == tg.minor)
                                           : mt.source == tg.volume->dev;
        if (same) mount_target_[i] = int(t);
      }
    }
    if (targets_.empty()) {
      const char* what = o_.volume_type == VolumeType::kData ? "Data" :
                         o_.volume_type == VolumeType::kOs ? "OS" : "OS or Data";
      f_.Add("no-targets", Severity::kInfo, "",
             std::string("no mounted ") + what + " volume to encrypt",
             "mount the data disks (and list them in /etc/fstab), or choose another --volume-type");
    }
  }

  // The target a path is on (through any of its mounts, bind mounts included), or -1.
  int TargetOf(const std::string& path) const {
    int mnt = mounts_.Owner(path);
    if (mnt >= 0 && mount_target_[size_t(mnt)] >= 0) return mount_target_[size_t(mnt)];
    for (size_t t = 0; t < targets_.size(); ++t)
      for (const auto& d : targets_[t].devs)
        if (path == d) return int(t);
    return -1;
  }

  // fuser -m: what would keep the target from being unmounted. The OS volume is never
  // unmounted by diskseal (it is encrypted online and finished at boot), so it is not scanned.
  void OpenFiles() {
    std::vector<std::vector<std::string>> ev(targets_.size());
    std::vector<std::set<int>> pids(targets_.size());
    for (const auto& p : procs_) {
      for (size_t i = 0; i < p.files.size(); ++i) {
        const auto& [what, path] = p.files[i];
        int t = TargetOf(path);
        if (t < 0 || targets_[size_t(t)].volume->role == VolumeRole::kOs) continue;
        pids[size_t(t)].insert(p.pid);
        ev[size_t(t)].push_back(p.Describe() + " " + what + " " + path);
      }
    }
    for (size_t t = 0; t < targets_.size(); ++t) {
      if (pids[t].empty()) continue;
      const Volume& v = *targets_[t].volume;
      if (std::find(o_.no_unmount.begin(), o_.no_unmount.end(), v.mountpoint) != o_.no_unmount.end()) {
        auto& f = f_.Add("open-files", Severity::kInfo, Name(v),
                         std::to_string(pids[t].size()) + (pids[t].size() == 1 ? " process holds" : " processes hold") +
                             " files open on " + Name(v) + ": they keep working, it is encrypted without a remount",
                         "");
        Findings::Evidence(f, ev[t]);
        continue;
      }
      auto& f = f_.Add("open-files", Severity::kBlocking, Name(v),
                       std::to_string(pids[t].size()) +
                           (pids[t].size() == 1 ? " process holds" : " processes hold") +
                           " files open on " + Name(v) + ": it cannot be unmounted to encrypt it",
                       "stop them (systemctl stop <service>, or kill the PIDs listed), then run again; "
                       "`fuser -vm " + Name(v) + "` shows the same");
      Findings::Evidence(f, ev[t]);
    }
  }

  void ConcurrentTools() {
    static const std::set<std::string> kPackageTools = {
        "dpkg", "apt", "apt-get", "aptitude", "unattended-upgr", "yum", "dnf", "rpm", "zypper"};
    static const char* const kLockFiles[] = {
        "/var/lib/dpkg/lock-frontend", "/var/lib/dpkg/lock", "/var/lib/apt/lists/lock",
        "/var/cache/apt/archives/lock", "/var/lib/rpm/.rpm.lock", "/var/run/yum.pid",
        "/run/yum.pid"};
    static const std::set<std::string> kDisksealOps = {"encrypt", "decrypt", "reencrypt",
                                                        "resume", "enable", "disable"};
    // /proc/locks: "1: POSIX ADVISORY WRITE 812 08:01:393 0 EOF"; the pids holding a lock
    std::set<int> lockers;
    {
      std::istringstream in(ReadSmall(root_, "/proc/locks", 4 << 20));
      std::string line;
      while (std::getline(in, line)) {
        std::istringstream f(line);
        std::string id, kind, mode, rw;
        int pid = 0;
        if (f >> id >> kind >> mode >> rw >> pid) lockers.insert(pid);
      }
    }
    std::vector<std::string> ev;
    for (const auto& p : procs_) {
      std::string arg1 = p.argv.size() > 1 ? p.argv[1] : "";
      std::string cmdline;
      for (const auto& a : p.argv) cmdline += (cmdline.empty() ? "" : " ") + a;
      std::string why;
      if (kPackageTools.count(p.comm)) why = "package manager";
      if (p.comm == "cryptsetup" &&
          std::any_of(p.argv.begin(), p.argv.end(), [](const std::string& a) {
            return a == "reencrypt" || a == "luksFormat" || a == "--reduce-device-size";
          }))
        why = "cryptsetup changing a device";
      if (p.comm == "diskseal" && kDisksealOps.count(arg1)) why = "another diskseal " + arg1;
      if (cmdline.find("AzureDiskEncryptionForLinux") != std::string::npos ||
          cmdline.find("VMEncryption") != std::string::npos)
        why = "the Azure Disk Encryption extension";
      for (const auto& [what, path] : p.files)
        for (const char* lock : kLockFiles)
          if (path == lock)
            why = std::string("holds ") + lock + (lockers.count(p.pid) ? " (locked, /proc/locks)" : " open");
      if (!why.empty())
        ev.push_back(p.Describe() + ": " + why + (cmdline.empty() ? "" : ": " + cmdline.substr(0, 200)));
    }
    if (ev.empty()) return;
    auto& f = f_.Add("concurrent-tools", Severity::kBlocking, "",
                     "another program is installing packages or changing disks right now",
                     "wait for it to finish (or stop it), and run extensions and custom scripts one "
                     "after the other, not at the same time as encryption");
    Findings::Evidence(f, ev);
  }

  void Selinux() {
    std::string enforce = Trim(ReadSmall(root_, "/sys/fs/selinux/enforce", 64));
    if (enforce != "1") return;
    f_.Add("selinux", Severity::kInfo, "",
           "SELinux is enforcing: diskseal does not need it off (ADE did, for its unmount of /); "
           "the header files it writes get the label of /var/lib/diskseal",
           "nothing to do; if boot-time unlock is denied, run restorecon -Rv " + o_.header_dir);
  }

  void Lvm() {
    for (const auto& t : targets_) {
      const Volume& v = *t.volume;
      if (!v.lvm_lv) continue;
      if (v.role != VolumeRole::kOs) {
        f_.Add("lvm-layout", Severity::kInfo, Name(v),
               "an LVM logical volume (" + v.dev + "): encrypted inside the LV, the volume group "
               "is not changed");
        continue;
      }
      auto pv = LvmPhysicalDevice(m_, v);
      if (!pv.ok()) {
        f_.Add("lvm-layout", Severity::kBlocking, Name(v), pv.status().message(),
               "move the root LV onto one physical volume (pvmove), or keep / unencrypted");
        continue;
      }
      const std::string problem = root_.env ? MachineLvmFilterProblem(*root_.env, root_) : "";
      if (!problem.empty()) {
        f_.Add("lvm-layout", Severity::kBlocking, Name(v),
               "the OS volume is an LVM logical volume on " + *pv + ", and " + problem,
               "remove that setting from /etc/lvm (diskseal adds its own filter for " + *pv + ")");
        continue;
      }
      f_.Add("lvm-layout", Severity::kInfo, Name(v),
             "the OS volume is an LVM logical volume (" + v.dev + "): diskseal encrypts the physical volume " +
                 *pv + " under it, with every LV of the group on it; the initramfs opens it before LVM "
                 "activates, and a filter in /etc/lvm/lvmlocal.conf keeps LVM off the raw device");
    }
  }

  void Memory() {
    std::istringstream in(ReadSmall(root_, "/proc/meminfo"));
    std::string key;
    uint64_t kb = 0;
    bool found = false;
    std::string line;
    while (std::getline(in, line)) {
      std::istringstream f(line);
      if (f >> key >> kb && key == "MemAvailable:") {
        found = true;
        break;
      }
    }
    if (!found) {
      f_.Add("memory", Severity::kWarning, "", "cannot read MemAvailable from /proc/meminfo");
      return;
    }
    uint64_t avail = kb * 1024;
    // The PBKDF asks for at most half of what is free (luks2/kdf.cc), so it shrinks to fit; the
    // engine buffer and the process itself do not.
    uint64_t fixed = o_.hotzone_bytes + kBaseRssBytes;
    uint64_t pbkdf = std::min(o_.pbkdf_memory_bytes, avail / 2);
    std::string figures = "MemAvailable " + Mib(avail) + "; diskseal needs " + Mib(fixed + pbkdf) +
                          " (hotzone " + Mib(o_.hotzone_bytes) + " + PBKDF " + Mib(pbkdf) +
                          " + base " + Mib(kBaseRssBytes) + ")";
    if (avail < fixed + (1 * kMiB)) {
      f_.Add("memory", Severity::kBlocking, "", "not enough free memory: " + figures,
             "free memory (stop services) or use a smaller --hotzone-size");
    } else if (pbkdf < o_.pbkdf_memory_bytes) {
      f_.Add("memory", Severity::kWarning, "",
             figures + ": the Argon2 memory cost will be lowered to " + Mib(pbkdf) +
                 " (half of what is free), which makes the passphrase cheaper to guess",
             "free memory before encrypting, or accept the lower cost");
    } else {
      f_.Add("memory", Severity::kInfo, "",
             figures + "; ADE's 7 GB suggestion does not apply (no tmpfs copy of the root)");
    }
  }

  void NestedMounts() {
    std::set<std::pair<std::string, std::string>> said;
    for (const auto& t : targets_) {
      const Volume& v = *t.volume;
      if (v.mountpoint.empty() || v.role == VolumeRole::kOs) continue;
      std::vector<std::string> inner;
      for (const auto& mt : m_.mounts)
        if (Under(mt.mountpoint, v.mountpoint)) inner.push_back(mt.mountpoint + " (" + mt.source + ")");
      if (!inner.empty()) {
        auto& f = f_.Add("nested-mounts", Severity::kWarning, Name(v),
                         std::to_string(inner.size()) + " mount" + (inner.size() == 1 ? " is" : "s are") +
                             " nested in " + v.mountpoint + ": they are unmounted first and "
                             "mounted again after it",
                         "mount data disks side by side (e.g. /data1, /data2), not inside each "
                         "other or inside /mnt, and keep their fstab lines in mount order");
        Findings::Evidence(f, inner);
      }
      // Inside another block-device volume (not the root, which holds every mount point)?
      int outer = mounts_.Owner(ParentDir(v.mountpoint));
      if (outer >= 0) {
        const Mount& om = m_.mounts[size_t(outer)];
        if (om.mountpoint != "/" && om.source.rfind("/dev/", 0) == 0) {
          const char* what = om.mountpoint == "/mnt" || om.mountpoint == "/mnt/resource"
                                 ? " (the resource disk, which Azure may wipe)" : "";
          f_.Add("nested-mounts", Severity::kWarning, Name(v),
                 v.mountpoint + " is nested in " + om.mountpoint + what +
                     ": it can only be mounted after " + om.mountpoint,
                 "move the mount point out of " + om.mountpoint);
        }
      }
    }
  }

  void FilesystemMode() {
    for (const auto& t : targets_) {
      const Volume& v = *t.volume;
      const std::string& fs = v.fstype;
      bool ext = fs == "ext2" || fs == "ext3" || fs == "ext4";
      if (v.encrypted) continue;
      if (v.block < 0) {
        f_.Add("filesystem-mode", Severity::kBlocking, Name(v),
               "its device " + v.dev + " is not in /sys/class/block: cannot tell what to encrypt",
               "mount it by its real device path (/dev/..., /dev/mapper/...)");
        continue;
      }
      if (o_.header_mode == HeaderMode::kShrink && !ext) {
        f_.Add("filesystem-mode", Severity::kBlocking, Name(v),
               fs + " cannot be shrunk to make room for the header at the start of the device",
               "use --header-mode detached (the header in a file, nothing is resized): it works "
               "for " + fs);
      } else {
        f_.Add("filesystem-mode", Severity::kInfo, Name(v),
               fs + (ext ? ": the detached header and shrinking both work"
                         : ": the detached header works; shrinking does not (ext2/3/4 only)"));
      }
    }
  }

  uint64_t FreeBytes(const std::string& machine_path, bool& known) {
    known = true;
    auto it = o_.free_bytes.find(machine_path);
    if (it != o_.free_bytes.end()) return it->second;
    // the directory may not exist yet: the space is the nearest existing parent's
    std::string p = machine_path;
    for (;;) {
      auto s = root_.env->StatFs(root_.Path(p));
      if (s.ok()) return s->avail_bytes;
      if (p == "/") break;
      p = ParentDir(p);
    }
    known = false;
    return 0;
  }

  void HeaderSpace() {
    std::vector<const Volume*> need;
    // The OS volume's header goes to /boot, not to header_dir (OsHeaderLocation checks it).
    for (const auto& t : targets_)
      if (!t.volume->encrypted && (t.volume->role != VolumeRole::kOs || o_.header_mode == HeaderMode::kShrink))
        need.push_back(t.volume);
    if (need.empty()) return;
    if (o_.header_mode == HeaderMode::kShrink) {
      for (const Volume* v : need) {
        bool known = false;
        uint64_t avail = FreeBytes(v->mountpoint, known);
        if (!known || avail >= o_.header_bytes) continue;
        f_.Add("shrink-space", Severity::kBlocking, Name(*v),
               "only " + Mib(avail) + " free on " + v->mountpoint + ": shrinking it by the " +
                   Mib(o_.header_bytes) + " header needs that much free",
               "free " + Mib(o_.header_bytes - avail) + " on " + v->mountpoint +
                   ", or use --header-mode detached");
      }
      return;
    }
    // The header directory must live on a filesystem that is not itself being encrypted (the
    // header is needed to open the volume). On the OS volume it is fine for Data headers: / is
    // unlocked at boot before any data volume.
    std::string hd = o_.header_dir;
    int owner = mounts_.Owner(hd);
    if (owner >= 0 && mount_target_[size_t(owner)] >= 0) {
      const Volume& v = *targets_[size_t(mount_target_[size_t(owner)])].volume;
      if (v.role != VolumeRole::kOs)
        f_.Add("header-location", Severity::kBlocking, Name(v),
               hd + " is on " + Name(v) + ", which is to be encrypted: its header cannot live there",
               "choose a header directory on another filesystem");
    }
    bool known = false;
    uint64_t avail = FreeBytes(hd, known);
    uint64_t want = o_.header_bytes * need.size();
    if (!known) {
      f_.Add("header-space", Severity::kWarning, hd, "cannot read the free space under " + hd);
    } else if (avail < want) {
      f_.Add("header-space", Severity::kBlocking, hd,
             "only " + Mib(avail) + " free for " + std::to_string(need.size()) + " detached header" +
                 (need.size() == 1 ? "" : "s") + " of " + Mib(o_.header_bytes) + " in " + hd,
             "free " + Mib(want - avail) + " on the filesystem holding " + hd);
    }
  }

  const Target* OsTarget() const {
    for (const auto& t : targets_)
      if (t.volume->role == VolumeRole::kOs && !t.volume->encrypted) return &t;
    return nullptr;
  }

  // The OS volume's detached header is read by the initramfs before / is unlocked, so it must be
  // on a filesystem of its own that stays plaintext: a separate /boot (not /boot/efi, which the
  // firmware owns), with room for the header and the temporary copy written while it is placed.
  void OsHeaderLocation() {
    const Target* os = OsTarget();
    if (!os || o_.header_mode == HeaderMode::kShrink) return;
    const Volume& v = *os->volume;
    const std::string room = Mib(2 * o_.header_bytes);
    int boot = -1;
    for (size_t i = 0; i < m_.mounts.size(); ++i)
      if (m_.mounts[i].mountpoint == "/boot") boot = int(i);
    if (boot < 0) {
      f_.Add("header-location", Severity::kBlocking, Name(v),
             "no separate /boot: the OS volume's detached header (" + o_.os_header + ") must be "
             "readable before / is unlocked, and / is the volume being encrypted",
             "add a separate /boot partition (ext4) with at least " + room + " free for the "
             "header, or put the header on a device of its own (an unencrypted partition or disk); "
             "diskseal does not carve /boot out of / yet");
      return;
    }
    int t = TargetOf(o_.os_header);
    if (t >= 0) {
      const Mount& bm = m_.mounts[size_t(boot)];
      f_.Add("header-location", Severity::kBlocking, Name(v),
             o_.os_header + " is on " + Name(*targets_[size_t(t)].volume) + " (" + bm.source +
                 " at /boot), which is to be encrypted: the header cannot live there",
             "/boot must be a filesystem of its own on a partition that stays plaintext, with at "
             "least " + room + " free");
      return;
    }
    bool known = false;
    uint64_t avail = FreeBytes("/boot", known);
    if (!known) {
      f_.Add("header-space", Severity::kWarning, "/boot", "cannot read the free space under /boot");
    } else if (avail < o_.header_bytes) {
      f_.Add("header-space", Severity::kBlocking, "/boot",
             "only " + Mib(avail) + " free on /boot for the OS volume's " + Mib(o_.header_bytes) +
                 " detached header (" + o_.os_header + ")",
             "free " + Mib(2 * o_.header_bytes - avail) + " on /boot (old kernels: apt-get autoremove), "
             "or give /boot a larger partition");
    } else if (avail < 2 * o_.header_bytes) {
      f_.Add("header-space", Severity::kWarning, "/boot",
             "only " + Mib(avail) + " free on /boot: the " + Mib(o_.header_bytes) + " header fits, "
             "the next kernel's initramfs may not",
             "free space on /boot (apt-get autoremove) to keep at least " + room + " free");
    }
  }

  // The boot side is an initramfs-tools hook and boot script (packaging/initramfs-tools): without
  // initramfs-tools nothing unlocks / at boot. dracut machines are not supported yet.
  void Initramfs() {
    if (!OsTarget()) return;
    auto any = [&](std::initializer_list<const char*> paths, std::string& seen) {
      for (const char* p : paths)
        if (root_.env->Exists(root_.Path(p))) {
          seen = p;
          return true;
        }
      return false;
    };
    std::string upd, conf, dracut;
    bool has_upd = any({"/usr/sbin/update-initramfs", "/sbin/update-initramfs", "/usr/bin/update-initramfs",
                        "/bin/update-initramfs"}, upd);
    bool has_conf = any({"/etc/initramfs-tools"}, conf);
    bool has_dracut = any({"/usr/bin/dracut", "/usr/sbin/dracut", "/sbin/dracut", "/etc/dracut.conf",
                           "/etc/dracut.conf.d"}, dracut);
    std::vector<std::string> ev = {"update-initramfs: " + (has_upd ? upd : std::string("not found")),
                                   "/etc/initramfs-tools: " + std::string(has_conf ? "yes" : "no"),
                                   "dracut: " + (has_dracut ? dracut : std::string("not found"))};
    Finding* f = nullptr;
    if (has_upd && has_conf) {
      f = &f_.Add("initramfs", Severity::kInfo, "",
                  "initramfs-tools builds the initramfs: diskseal's hook goes into every initramfs "
                  "it builds, for this kernel and the next ones");
    } else if (has_dracut) {
      f = &f_.Add("initramfs", Severity::kBlocking, "",
                  "this machine builds its initramfs with dracut: diskseal's boot hook exists for "
                  "initramfs-tools only, dracut is not supported yet",
                  "install initramfs-tools (apt-get install initramfs-tools) where the distribution "
                  "allows it, or wait for dracut support");
      f->code = Code::kUnsupported;
    } else {
      f = &f_.Add("initramfs", Severity::kBlocking, "",
                  "initramfs-tools is not installed (no update-initramfs and /etc/initramfs-tools): "
                  "nothing would unlock / at boot",
                  "apt-get install initramfs-tools, then run doctor again");
    }
    f->evidence = std::move(ev);
  }

  // For every volume recorded in the state directory whose detached header is in place: the
  // header file is there and reads as LUKS2; with a vault, it is not stale. Stale means: the
  // vault's newest enabled version of the volume's header secret is "final", it is not the version
  // the file's escrow pin names, and the file disagrees with it (it still records an operation in
  // progress, or its data segment has another volume key): the file is older than what the vault
  // proves, e.g. /boot restored from an old backup. Opening with it would read the data wrongly.
  void VolumeHeaders() {
    if (o_.state_dir.empty()) return;
    StateDir sd(*root_.env, root_.Path(o_.state_dir));
    auto recs = sd.List();
    if (!recs.ok()) {
      f_.Add("volume-header", Severity::kWarning, o_.state_dir,
             "cannot read the volume records: " + recs.status().message());
      return;
    }
    const bool with_vault = o_.vault && !o_.vault->url.empty();
    std::unique_ptr<vault::VaultClient> client;
    std::string client_error;
    if (with_vault) {
      auto c = vault::VaultClient::Create(*root_.env, *o_.vault);
      if (c.ok()) client = std::move(c).value();
      else client_error = c.status().message();
    }
    for (const auto& rec : *recs) {
      if (rec.header.empty() || rec.step < Step::kHeaderPlaced || rec.step >= Step::kDisabled) continue;
      CheckVolumeHeader(rec, with_vault, client.get(), client_error);
    }
  }

  void CheckVolumeHeader(const VolumeRecord& rec, bool with_vault, vault::VaultClient* client,
                         const std::string& client_error) {
    const std::string vol = rec.mountpoint.empty() ? rec.device : rec.mountpoint;
    const std::string& hp = rec.header;
    // The secret names: from the record's escrowed passphrase version (the pin in the header
    // says the same; the record is what is left when the header is lost).
    std::string base;
    if (!rec.secret_id.empty())
      if (auto id = vault::ParseObjectId(rec.secret_id, "secrets"); id.ok()) base = id->first;
    const std::string hname = base.empty() ? "" : engine::HeaderSecretName(base);
    const std::string vault_flags =
        with_vault ? "--vault " + o_.vault->url + " --vault-token-file ..." : "--vault URL --vault-token-file F";
    const std::string names = base == "diskseal-" + rec.name ? "--uuid " + rec.name : "--vault-secret-name " + base;
    const std::string repair = "diskseal repair " + rec.device + " --header " + hp + " " + names + " " + vault_flags;

    std::string unreadable;
    std::optional<luks2::HeaderRead> read;
    if (!root_.env->Exists(root_.Path(hp))) {
      unreadable = "is missing";
    } else {
      auto dev = root_.env->Open(root_.Path(hp), OpenOptions{});
      if (!dev.ok()) {
        unreadable = "cannot be opened (" + dev.status().message() + ")";
      } else {
        auto r = luks2::ReadHeader(**dev);
        if (r.ok()) read = std::move(r).value();
        else unreadable = "does not read as a LUKS2 header (" + r.status().message() + ")";
      }
    }
    std::vector<std::string> ev = {"record: " + rec.name + " (" + rec.device + ", step " + StepName(rec.step) + ")"};
    std::optional<engine::EscrowedHeader> escrowed;
    std::string vault_note;
    if (!hname.empty() && with_vault) {
      if (!client) {
        vault_note = "vault: not asked (" + client_error + ")";
      } else {
        auto e = engine::NewestEscrowedHeader(*client, hname);
        if (e.ok()) {
          escrowed = *e;
          vault_note = "vault: newest header " + e->id + " (" + e->state + ")";
        } else {
          vault_note = "vault: " + hname + ": " + e.status().message();
        }
      }
    }
    if (!unreadable.empty()) {
      ev.push_back(hp + " " + unreadable);
      std::string fix;
      if (hname.empty()) {
        fix = "restore " + hp + " from your own header backup: the volume was not escrowed to a vault";
      } else if (!with_vault) {
        ev.push_back("vault: not checked (give doctor --vault ... to see what it holds)");
        fix = "rebuild it from the vault's final header: " + repair;
      } else if (escrowed && escrowed->state == "final") {
        ev.push_back(vault_note);
        fix = "rebuild it from the vault: " + repair;
      } else {
        ev.push_back(vault_note.empty() ? "vault: not asked" : vault_note);
        fix = escrowed ? "the vault holds only the header escrowed before the encryption finished, which "
                         "cannot say how far it got: restore " + hp + " from a backup of it"
                       : "restore " + hp + " from a backup, or check the vault (" + repair + " once it answers)";
      }
      auto& f = f_.Add("volume-header", Severity::kBlocking, vol,
                       "the detached header " + hp + " of " + rec.device + " " + unreadable +
                           ": without it the volume cannot be opened",
                       fix);
      f.evidence = std::move(ev);
      f.code = Code::kNotFound;
      return;
    }
    const luks2::Metadata& md = read->md;
    ev.push_back(hp + ": LUKS2 " + md.uuid);
    if (read->needs_repair()) {
      auto& f = f_.Add("volume-header", Severity::kWarning, vol,
                       "one of the two copies in " + hp + " is damaged or older; the other is intact",
                       "diskseal repair " + rec.device + " --header " + hp);
      f.evidence = ev;
    }
    auto pin = engine::ReadEscrowPin(md);
    std::string pinned_version;
    if (pin.ok() && *pin && !(*pin)->header_secret.empty()) {
      if (auto id = vault::ParseObjectId((*pin)->header_secret, "secrets"); id.ok()) pinned_version = id->second;
      ev.push_back("pin: " + (*pin)->header_secret + " (" + (*pin)->header_state + ")");
    }
    if (hname.empty()) {
      auto& f = f_.Add("volume-header", Severity::kInfo, vol,
                       hp + " reads as LUKS2; it is not escrowed (no vault): keep a backup of it");
      f.evidence = std::move(ev);
      return;
    }
    if (!with_vault) {
      auto& f = f_.Add("volume-header", Severity::kInfo, vol,
                       hp + " reads as LUKS2; stale check skipped: give doctor --vault ... to compare it "
                            "with the header escrowed in the vault");
      f.evidence = std::move(ev);
      return;
    }
    ev.push_back(vault_note);
    const auto segs = luks2::Segments(md);
    const bool local_finished = segs.size() == 1 && segs.front().type == "crypt";
    Bytes local_digest;
    if (local_finished)
      if (auto d = luks2::DigestOfSegment(md, 0)) local_digest = d->digest;
    if (escrowed && escrowed->state == "final" && escrowed->version != pinned_version &&
        (!local_finished || local_digest != escrowed->segment0_digest)) {
      auto& f = f_.Add("volume-header", Severity::kBlocking, vol,
                       hp + " is stale: the vault's newest header " + escrowed->id + " records the finished " +
                           "encryption, and this file " +
                           (local_finished ? "has another volume key" : "still records an operation in progress") +
                           (pinned_version.empty() ? "" : " and names the older version " + pinned_version),
                       "do not open the volume with it; if " + hp + " came from an old backup, move it aside "
                       "(mv " + hp + " " + hp + ".stale) and run " + repair);
      f.evidence = std::move(ev);
      f.code = Code::kCorrupt;
      return;
    }
    if (local_finished && engine::FinalHeaderEscrowPending(md)) {
      auto& f = f_.Add("volume-header", Severity::kWarning, vol,
                       "the vault does not hold " + hp + " as it is now (finished): a lost header could not "
                       "be rebuilt",
                       "diskseal resume " + rec.device + " --header " + hp + " " + vault_flags +
                           " escrows it");
      f.evidence = std::move(ev);
      return;
    }
    auto& f = f_.Add("volume-header", Severity::kInfo, vol,
                     hp + " reads as LUKS2 and is not older than the header escrowed in the vault");
    f.evidence = std::move(ev);
  }

  void Encrypted() {
    for (const auto& t : targets_)
      if (t.volume->encrypted)
        f_.Add("already-encrypted", Severity::kInfo, Name(*t.volume),
               "already encrypted (" + t.volume->dev + " is a dm-crypt mapping)" +
                   (t.volume->crypttab ? ", unlocked at boot by crypttab entry " + t.volume->crypttab->name : ""));
    for (const auto& v : m_.volumes)
      if (v.is_luks && v.mountpoint.empty())
        f_.Add("already-encrypted", Severity::kInfo, v.dev, "a LUKS volume, not open");
  }

  // An in-place operation a crash interrupted, on a device (attached header) or in a detached
  // header file: the LUKS2 header says so in its mandatory requirements.
  void Interrupted() {
    auto check = [&](const std::string& machine_path, const std::string& label, bool header_file) {
      auto dev = root_.env->Open(root_.Path(machine_path), OpenOptions{});
      if (!dev.ok()) return;
      auto magic = luks2::HasLuksMagic(**dev);
      if (!magic.ok() || !*magic) return;
      auto hdr = luks2::ReadHeader(**dev);
      if (!hdr.ok()) return;
      for (const auto& req : hdr->md.requirements())
        if (req.rfind("online-reencrypt", 0) == 0)
          f_.Add("interrupted", Severity::kInfo, label,
                 "an in-place operation on " + label + " was interrupted (requirement " + req + ")",
                 header_file ? "resume it: diskseal resume DEVICE --header " + machine_path
                             : "resume it: diskseal resume " + label);
    };
    for (const auto& b : m_.blocks)
      if (b.signature == "luks2") check("/dev/" + b.name, b.dev, false);
    auto files = root_.env->ListDir(root_.Path(o_.header_dir));
    if (files.ok()) {
      std::sort(files->begin(), files->end());
      for (const auto& f : *files) check(o_.header_dir + "/" + f, o_.header_dir + "/" + f, true);
    }
  }

  std::string KernelSupport() {
    bool dm = false;
    {
      std::istringstream in(ReadSmall(root_, "/proc/misc"));
      std::string line;
      while (std::getline(in, line)) dm |= line.find("device-mapper") != std::string::npos;
    }
    bool control = root_.env->Exists(root_.Path("/dev/mapper/control"));
    std::string crypto = ReadSmall(root_, "/proc/crypto", 4 << 20);
    bool xts = crypto.find("xts(aes)") != std::string::npos;
    bool fuse = root_.env->Exists(root_.Path("/dev/fuse"));
    bool fusermount = root_.env->Exists(root_.Path("/usr/bin/fusermount3")) ||
                      root_.env->Exists(root_.Path("/bin/fusermount3"));
    std::vector<std::string> ev = {
        std::string("/proc/misc device-mapper: ") + (dm ? "yes" : "no"),
        std::string("/dev/mapper/control: ") + (control ? "yes" : "no"),
        std::string("/proc/crypto xts(aes): ") + (xts ? "loaded" : "not loaded (loaded on first use)"),
        std::string("/dev/fuse: ") + (fuse ? "yes" : "no"),
        std::string("fusermount3: ") + (fusermount ? "yes" : "no")};
    std::string mode = dm && control ? "dm-crypt" : fuse && fusermount ? "userspace" : "none";
    bool os = std::any_of(targets_.begin(), targets_.end(),
                          [](const Target& t) { return t.volume->role == VolumeRole::kOs; });
    Finding* f = nullptr;
    if (mode == "dm-crypt") {
      f = &f_.Add("kernel-support", Severity::kInfo, "",
                  "dm-crypt is available: volumes open through the kernel (/dev/mapper/NAME)");
    } else if (mode == "userspace" && !os) {
      f = &f_.Add("kernel-support", Severity::kWarning, "",
                  "no device-mapper in this kernel: volumes open in userspace through FUSE "
                  "(/run/diskseal/NAME), slower than dm-crypt",
                  "load dm_crypt (modprobe dm_crypt) or boot a kernel that has it");
    } else if (mode == "userspace") {
      f = &f_.Add("kernel-support", Severity::kBlocking, "",
                  "no device-mapper in this kernel: the OS volume cannot be opened at boot "
                  "through FUSE",
                  "boot a kernel with dm-crypt (modprobe dm_crypt)");
    } else {
      f = &f_.Add("kernel-support", Severity::kBlocking, "",
                  "neither device-mapper nor FUSE: an encrypted volume could not be opened",
                  "modprobe dm_crypt, or install fuse3 (apt-get install fuse3)");
    }
    f->evidence = std::move(ev);
    return mode;
  }

  // The vault, stage by stage: each request's failure names the first stage that failed. The
  // permission probes send bodies the vault must reject as malformed (400) once the token is
  // allowed, so doctor never writes a secret or uses a key.
  void Vault() {
    const auto& vo = *o_.vault;
    std::vector<std::string> ev;
    std::string proxy = vault::ProxyFor(vo.url);
    ev.push_back("proxy: " + (proxy.empty() ? std::string("none") : proxy));
    auto fail = [&](const std::string& stage, const std::string& msg, const std::string& fix) {
      ev.push_back("failed stage: " + stage);
      auto& f = f_.Add("vault", Severity::kBlocking, vo.url, stage + ": " + msg, fix);
      f.evidence = ev;
      f.code = stage == "token" ? Code::kInvalidArgument
               : stage == "authentication" ? Code::kPermissionDenied
               : stage == "key" ? Code::kNotFound : Code::kNetwork;
    };
    auto client = vault::VaultClient::Create(*root_.env, vo);
    if (!client.ok()) return fail("token", client.status().message(), "give a readable token file (--vault-token-file)");
    std::map<std::string, std::string> fixes = {
        {"proxy", "check https_proxy (" + proxy + ") or add the vault to no_proxy"},
        {"dns", "check the vault host name and /etc/resolv.conf"},
        {"tcp", "open outbound TCP to the vault's port (NSG, firewall), or set https_proxy"},
        {"tls", "the endpoint does not speak TLS as a vault does: check the URL and port"},
        {"tls-verify", "give the vault's CA with --vault-ca, or check that the host name matches "
                       "its certificate"},
        {"http", "check the URL points at the vault"},
        {"timeout", "the vault or a firewall drops the traffic: open the port or set https_proxy"}};
    struct Probe {
      const char* method;
      std::string path, body, perm;
    };
    std::vector<Probe> probes = {{"GET", "/secrets/diskseal-doctor-probe", "", "secrets:get"},
                                 {"PUT", "/secrets/diskseal-doctor-probe", "{", "secrets:set"}};
    if (!o_.kek.empty()) {
      // Exactly what encrypt and enable use with --kek: wrap (of 32 zero bytes, a real call that
      // also tells whether the key exists) and unwrap. No keys:get: they never read the key.
      probes.push_back({"POST", "/keys/" + o_.kek + "/wrapkey",
                        R"({"alg":"RSA-OAEP","value":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})", "keys:wrap"});
      probes.push_back({"POST", "/keys/" + o_.kek + "/unwrapkey", "{", "keys:unwrap"});
    }
    std::vector<std::string> missing;
    for (size_t i = 0; i < probes.size(); ++i) {
      const Probe& p = probes[i];
      auto r = (*client)->Call(p.method, p.path, p.body);
      if (!r.ok()) {
        const auto& tf = (*client)->last_transport_failure();
        std::string stage = tf.stage.empty() ? "request" : tf.stage;
        return fail(stage, r.status().message(), fixes.count(stage) ? fixes[stage] : "");
      }
      if (i == 0) ev.push_back("dns, tcp, tls: ok (certificate verified)");
      bool json_reply = !r->body.empty() && r->body[0] == '{';
      if (r->status == 401)
        return fail("authentication", "the vault refused the token (HTTP 401" +
                                          (r->www_authenticate.empty() ? "" : ", " + r->www_authenticate) + ")",
                    "get a fresh token (az account get-access-token --resource https://vault.azure.net, "
                    "or diskseal vault token create)");
      if (r->status == 403) {
        missing.push_back(p.perm);
        continue;
      }
      if (p.perm == "keys:wrap" && r->status == 404)
        return fail("key", "the key " + o_.kek + " does not exist in the vault",
                    "create it (diskseal vault key create " + o_.kek + ") or name another --kek");
      // The wrap probe: 200, or 400 when the key is not RSA (an oct KEK takes A256KW).
      bool expected = p.body.empty()           ? (r->status == 200 || r->status == 404)
                      : p.perm == "keys:wrap" ? (r->status == 200 || r->status == 400)
                                              : r->status == 400;
      if (!expected || !json_reply)
        return fail("http", std::string(p.method) + " " + p.path + ": HTTP " + std::to_string(r->status) +
                                " is not a key vault's answer",
                    fixes["http"]);
      if (i == 0) ev.push_back("http: ok; authentication: ok");
    }
    if (!missing.empty()) {
      std::string list;
      for (const auto& m : missing) list += (list.empty() ? "" : ", ") + m;
      ev.push_back("permission missing: " + list);
      auto& f = f_.Add("vault", Severity::kBlocking, vo.url,
                       "permission: the token may not " + list,
                       "grant " + list + " (diskseal vault token create --allow ..., or Key Vault "
                       "access policy Secrets Get/Set, Keys Wrap Key/Unwrap Key)");
      f.evidence = ev;
      f.code = Code::kPermissionDenied;
      return;
    }
    ev.push_back("permissions: ok");
    auto& f = f_.Add("vault", Severity::kInfo, vo.url,
                     "the vault answers and the token may do what encryption needs");
    f.evidence = ev;
  }

  const MachineRoot& root_;
  const Machine& m_;
  const DoctorOptions& o_;
  MountMap mounts_;
  std::vector<Target> targets_;
  std::vector<int> mount_target_;  // per mount: index into targets_ or -1
  std::vector<Proc> procs_;
  Findings f_;
};

}  // namespace

const char* SeverityName(Severity s) {
  switch (s) {
    case Severity::kBlocking: return "blocking";
    case Severity::kWarning: return "warning";
    case Severity::kInfo: return "info";
  }
  return "info";
}

Result<VolumeType> ParseVolumeType(const std::string& s) {
  std::string l;
  for (char c : s) l.push_back(char(std::tolower(uint8_t(c))));
  if (l == "data") return VolumeType::kData;
  if (l == "os") return VolumeType::kOs;
  if (l == "all") return VolumeType::kAll;
  return InvalidArgument("--volume-type must be Data, OS or All, not '" + s + "'");
}

std::vector<std::string> CheckIds() { return {std::begin(kChecks), std::end(kChecks)}; }

bool Report::blocking() const {
  return std::any_of(findings.begin(), findings.end(),
                     [](const Finding& f) { return f.severity == Severity::kBlocking; });
}

uint64_t MemoryNeed(const DoctorOptions& o) {
  return o.hotzone_bytes + o.pbkdf_memory_bytes + kBaseRssBytes;
}

Result<Report> RunDoctor(const MachineRoot& root, const Machine& machine, const DoctorOptions& opts) {
  if (!root.env) return InvalidArgument("doctor needs an Env");
  for (const auto& id : opts.ignore)
    if (std::find(std::begin(kChecks), std::end(kChecks), id) == std::end(kChecks))
      return InvalidArgument("--ignore " + id + ": no such check (see diskseal doctor --help)");
  return Doctor(root, machine, opts).Run();
}

Status ReportStatus(const Report& r) {
  int n = 0;
  const Finding* first = nullptr;
  for (const auto& f : r.findings)
    if (f.severity == Severity::kBlocking) {
      ++n;
      if (!first) first = &f;
    }
  if (!first) return Status::Ok();
  static const std::map<std::string, Code> kCodes = {
      {"open-files", Code::kBusy},          {"concurrent-tools", Code::kBusy},
      {"memory", Code::kNoMemory},          {"filesystem-mode", Code::kUnsupported},
      {"kernel-support", Code::kUnsupported}, {"header-space", Code::kIOError},
      {"shrink-space", Code::kIOError},     {"header-location", Code::kUnsupported},
      {"initramfs", Code::kUnsupported},    {"volume-header", Code::kCorrupt},
      {"vault", Code::kNetwork}};
  Code code = first->code != Code::kOk ? first->code
              : kCodes.count(first->check) ? kCodes.at(first->check) : Code::kInternal;
  return Status(code, "doctor: " + std::to_string(n) + " blocking finding" + (n == 1 ? "" : "s") +
                          ", first: " + first->check + (first->volume.empty() ? "" : " " + first->volume) +
                          ": " + first->message);
}

std::string FormatText(const Report& r) {
  std::ostringstream out;
  for (const auto& f : r.findings) {
    out << SeverityName(f.severity) << " " << f.check << " " << (f.volume.empty() ? "-" : f.volume)
        << ": " << f.message << "\n";
    for (const auto& e : f.evidence) out << "    " << e << "\n";
    if (!f.fix.empty()) out << "    fix: " << f.fix << "\n";
  }
  return out.str();
}

nlohmann::ordered_json ToJson(const Report& r) {
  nlohmann::ordered_json j;
  j["blocking"] = r.blocking();
  j["exit_code"] = ExitCode(ReportStatus(r));
  j["open_mode"] = r.open_mode;
  j["targets"] = r.targets;
  j["findings"] = nlohmann::ordered_json::array();
  for (const auto& f : r.findings)
    j["findings"].push_back({{"check", f.check}, {"severity", SeverityName(f.severity)},
                             {"volume", f.volume}, {"message", f.message},
                             {"evidence", f.evidence}, {"fix", f.fix}});
  return j;
}

}  // namespace ds::machine
