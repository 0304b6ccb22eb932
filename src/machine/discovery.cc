#include "machine/discovery.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <set>

#include "dm/dm.h"
#include "util/bytes.h"
#include "volume/signature.h"

namespace ds::machine {

namespace {

// Reads bigger than this are not machine state files but a mistake (a device named as a file).
constexpr uint64_t kMaxStateFile = 16 << 20;
// Enough of a device to see every signature we recognise: btrfs keeps its superblock at 64 KiB.
constexpr uint64_t kProbeBytes = volume::kSignatureProbeBytes;

std::vector<std::string_view> SplitWs(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

// The kernel (mountinfo, swaps) and fstab/crypttab writers escape space, tab, newline and
// backslash as \ooo octal.
std::string Unescape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3' && s[i + 2] >= '0' && s[i + 2] <= '7' &&
        s[i + 3] >= '0' && s[i + 3] <= '7') {
      out.push_back(char((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

// Calls fn(line_number, fields) for each line that is neither blank nor a comment.
template <class Fn>
Status ForEachLine(std::string_view text, Fn fn) {
  int number = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++number;
    auto fields = SplitWs(line);
    if (fields.empty() || fields[0][0] == '#') continue;
    DS_RETURN_IF_ERROR(fn(number, fields));
  }
  return Status::Ok();
}

bool ParseUint(std::string_view s, uint64_t& out) {
  if (s.empty() || s.size() > 19) return false;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + uint64_t(c - '0');
  }
  out = v;
  return true;
}

bool ParseMajorMinor(std::string_view s, uint32_t& major, uint32_t& minor) {
  size_t colon = s.find(':');
  uint64_t a = 0, b = 0;
  if (colon == std::string_view::npos || !ParseUint(s.substr(0, colon), a) ||
      !ParseUint(s.substr(colon + 1), b) || a > UINT32_MAX || b > UINT32_MAX)
    return false;
  major = uint32_t(a);
  minor = uint32_t(b);
  return true;
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ' || s.back() == '\t')) s.pop_back();
  return s;
}

// The contents of a small state file, trimmed; "" when it is missing or unreadable (sysfs
// attributes a kernel or a captured tree does not have).
std::string ReadAttr(const MachineRoot& root, const std::string& machine_path) {
  auto r = root.env->ReadFile(root.Path(machine_path), 4096);
  return r.ok() ? Trim(std::move(r).value()) : std::string();
}

Result<std::string> ReadOptional(const MachineRoot& root, const std::string& path) {
  auto r = root.env->ReadFile(path, kMaxStateFile);
  if (!r.ok() && r.status().code() == Code::kNotFound) return std::string();
  return r;
}

}  // namespace

std::string MachineRoot::Path(const std::string& machine_path) const {
  if (live()) return machine_path;
  std::string base = dir;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  return machine_path.empty() || machine_path[0] != '/' ? base + "/" + machine_path
                                                        : base + machine_path;
}

std::string MachineRoot::Etc(const std::string& name) const {
  if (!etc_dir.empty()) return etc_dir + "/" + name;
  return Path("/etc/" + name);
}

const char* RoleName(VolumeRole r) {
  switch (r) {
    case VolumeRole::kOs: return "OS";
    case VolumeRole::kBoot: return "Boot";
    case VolumeRole::kData: return "Data";
    case VolumeRole::kSwap: return "Swap";
    case VolumeRole::kResource: return "Resource";
    case VolumeRole::kOther: return "Other";
  }
  return "Other";
}

const Volume* Machine::os() const {
  for (const auto& v : volumes)
    if (v.role == VolumeRole::kOs) return &v;
  return nullptr;
}

const Volume* Machine::boot() const {
  for (const auto& v : volumes)
    if (v.role == VolumeRole::kBoot) return &v;
  return nullptr;
}

std::vector<const Volume*> Machine::data() const {
  std::vector<const Volume*> out;
  for (const auto& v : volumes)
    if (v.role == VolumeRole::kData) out.push_back(&v);
  return out;
}

Result<std::vector<Mount>> ParseMountinfo(std::string_view text) {
  std::vector<Mount> out;
  DS_RETURN_IF_ERROR(ForEachLine(text, [&](int line, const auto& f) -> Status {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    auto sep = std::find(f.begin() + std::min<size_t>(6, f.size()), f.end(), std::string_view("-"));
    uint64_t id = 0, parent = 0;
    Mount m;
    if (f.size() < 7 || sep == f.end() || f.end() - sep < 3 || !ParseUint(f[0], id) ||
        !ParseUint(f[1], parent) || !ParseMajorMinor(f[2], m.major, m.minor))
      return Corrupt("mountinfo line " + std::to_string(line) + ": not 'id parent major:minor root "
                     "mountpoint options ... - fstype source options'");
    m.id = int(id);
    m.parent = int(parent);
    m.root = Unescape(f[3]);
    m.mountpoint = Unescape(f[4]);
    m.options = std::string(f[5]);
    m.fstype = Unescape(sep[1]);
    m.source = Unescape(sep[2]);
    if (f.end() - sep > 3) m.super_options = std::string(sep[3]);
    out.push_back(std::move(m));
    return Status::Ok();
  }));
  return out;
}

Result<std::vector<FstabEntry>> ParseFstab(std::string_view text) {
  std::vector<FstabEntry> out;
  DS_RETURN_IF_ERROR(ForEachLine(text, [&](int line, const auto& f) -> Status {
    FstabEntry e;
    uint64_t freq = 0, passno = 0;
    if (f.size() < 3 || f.size() > 6 || (f.size() > 4 && !ParseUint(f[4], freq)) ||
        (f.size() > 5 && !ParseUint(f[5], passno)))
      return Corrupt("fstab line " + std::to_string(line) +
                     ": not 'spec file vfstype [options [freq [passno]]]'");
    e.spec = Unescape(f[0]);
    e.file = Unescape(f[1]);
    e.vfstype = Unescape(f[2]);
    e.options = f.size() > 3 ? std::string(f[3]) : "defaults";
    e.freq = int(freq);
    e.passno = int(passno);
    out.push_back(std::move(e));
    return Status::Ok();
  }));
  return out;
}

Result<std::vector<CrypttabEntry>> ParseCrypttab(std::string_view text) {
  std::vector<CrypttabEntry> out;
  DS_RETURN_IF_ERROR(ForEachLine(text, [&](int line, const auto& f) -> Status {
    if (f.size() < 2 || f.size() > 4)
      return Corrupt("crypttab line " + std::to_string(line) +
                     ": not 'name device [key [options]]'");
    CrypttabEntry e;
    e.name = Unescape(f[0]);
    e.device = Unescape(f[1]);
    if (f.size() > 2) e.key = Unescape(f[2]);
    if (f.size() > 3) e.options = std::string(f[3]);
    out.push_back(std::move(e));
    return Status::Ok();
  }));
  return out;
}

void ProbeSignature(std::span<const uint8_t> b, BlockInfo& info) {
  if (auto sig = volume::ProbeSignature(b)) {
    info.signature = sig->type;
    info.fs_uuid = sig->uuid;
    info.fs_label = sig->label;
  }
}

namespace {

// The sysfs view of one block device. Attributes the kernel (or a captured tree) lacks stay empty.
BlockInfo ReadBlock(const MachineRoot& root, const std::string& name) {
  BlockInfo b;
  b.name = name;
  std::string base = "/sys/class/block/" + name;
  ParseMajorMinor(ReadAttr(root, base + "/dev"), b.major, b.minor);
  uint64_t sectors = 0;
  if (ParseUint(ReadAttr(root, base + "/size"), sectors)) b.size_bytes = sectors * 512;
  b.partition = root.env->Exists(root.Path(base + "/partition"));
  b.read_only = ReadAttr(root, base + "/ro") == "1";
  if (auto h = root.env->ListDir(root.Path(base + "/holders")); h.ok()) b.holders = std::move(*h);
  if (auto s = root.env->ListDir(root.Path(base + "/slaves")); s.ok()) b.slaves = std::move(*s);
  std::sort(b.holders.begin(), b.holders.end());
  std::sort(b.slaves.begin(), b.slaves.end());
  b.dm_name = ReadAttr(root, base + "/dm/name");
  b.dm_uuid = ReadAttr(root, base + "/dm/uuid");
  b.dev = b.dm_name.empty() ? "/dev/" + name : "/dev/mapper/" + b.dm_name;
  if (b.partition) {
    // Live sysfs links .../sdb/sdb1: the parent is the directory above. A captured tree may hold
    // plain directories: then the name without its partition number (nvme0n1p1 -> nvme0n1).
    auto link = root.env->ReadLink(root.Path(base));
    if (link.ok()) {
      std::string l = *link;
      size_t last = l.rfind('/');
      size_t prev = last == std::string::npos || last == 0 ? std::string::npos : l.rfind('/', last - 1);
      if (prev != std::string::npos) b.parent = l.substr(prev + 1, last - prev - 1);
    }
    if (b.parent.empty()) {
      std::string p = name;
      while (!p.empty() && std::isdigit(uint8_t(p.back()))) p.pop_back();
      if (p.size() > 1 && p.back() == 'p' && std::isdigit(uint8_t(p[p.size() - 2]))) p.pop_back();
      b.parent = p;
    }
  }
  return b;
}

void Probe(const MachineRoot& root, BlockInfo& b) {
  // sysfs says 0 sectors for drives without media (cdrom, floppy) and unattached loop devices:
  // opening those can stall, and there is nothing to read.
  if (b.size_bytes == 0 && root.live()) return;
  // A device we may not open (not root, media absent) is simply not recognised: discovery
  // describes what it can see, doctor reports what it could not.
  auto dev = root.env->Open(root.Path("/dev/" + b.name), OpenOptions{});
  if (!dev.ok() && !b.dm_name.empty()) dev = root.env->Open(root.Path(b.dev), OpenOptions{});
  if (!dev.ok()) return;
  uint64_t n = std::min<uint64_t>((*dev)->Size(), kProbeBytes);
  Bytes buf(n);
  if (n == 0 || !(*dev)->ReadAt(0, buf).ok()) return;
  ProbeSignature(buf, b);
}

class Resolver {
 public:
  explicit Resolver(const Machine& m) {
    for (size_t i = 0; i < m.blocks.size(); ++i) {
      const BlockInfo& b = m.blocks[i];
      by_path_["/dev/" + b.name] = int(i);
      by_path_[b.dev] = int(i);
      if (!b.dm_name.empty()) by_path_["/dev/" + b.dm_name] = int(i);  // /dev/vg/lv style is not resolved
      by_devno_[uint64_t(b.major) << 32 | b.minor] = int(i);
      if (!b.fs_uuid.empty()) by_uuid_.emplace(b.fs_uuid, int(i));
      if (!b.fs_label.empty()) by_label_.emplace(b.fs_label, int(i));
    }
  }
  // A spec as fstab/crypttab/mountinfo write it: /dev/x, UUID=, LABEL=, /dev/disk/by-uuid/.
  int Find(const std::string& spec) const {
    auto lookup = [](const std::map<std::string, int>& map, const std::string& key) {
      auto it = map.find(key);
      return it == map.end() ? -1 : it->second;
    };
    if (spec.rfind("UUID=", 0) == 0) return FindUuid(spec.substr(5));
    if (spec.rfind("LABEL=", 0) == 0) return lookup(by_label_, spec.substr(6));
    if (spec.rfind("/dev/disk/by-uuid/", 0) == 0) return FindUuid(spec.substr(18));
    if (spec.rfind("/dev/disk/by-label/", 0) == 0) return lookup(by_label_, Unescape(spec.substr(19)));
    return lookup(by_path_, spec);
  }
  int FindDevno(uint32_t major, uint32_t minor) const {
    auto it = by_devno_.find(uint64_t(major) << 32 | minor);
    return it == by_devno_.end() ? -1 : it->second;
  }
  int FindName(const std::string& name) const { return Find("/dev/" + name); }

 private:
  int FindUuid(std::string u) const {
    u.erase(std::remove(u.begin(), u.end(), '"'), u.end());
    auto it = by_uuid_.find(u);
    if (it != by_uuid_.end()) return it->second;
    for (char& c : u) c = char(std::tolower(uint8_t(c)));  // FAT ids are upper case, fstab may not be
    for (const auto& [k, v] : by_uuid_) {
      std::string lk = k;
      for (char& c : lk) c = char(std::tolower(uint8_t(c)));
      if (lk == u) return v;
    }
    return -1;
  }
  std::map<std::string, int> by_path_, by_uuid_, by_label_;
  std::map<uint64_t, int> by_devno_;
};

// Follows slaves/ down from block i: true when some device on the way matches `pred`.
template <class Pred>
bool AnyBelow(const Machine& m, const Resolver& r, int i, Pred pred, int depth = 0) {
  if (i < 0 || depth > 16) return false;
  const BlockInfo& b = m.blocks[size_t(i)];
  if (pred(b)) return true;
  for (const auto& s : b.slaves)
    if (AnyBelow(m, r, r.FindName(s), pred, depth + 1)) return true;
  return false;
}

bool IsCrypt(const BlockInfo& b) { return b.dm_uuid.rfind("CRYPT-", 0) == 0; }
bool IsLv(const BlockInfo& b) { return b.dm_uuid.rfind("LVM-", 0) == 0; }

bool IsResourceHint(const Volume& v, const BlockInfo* b) {
  if (v.mountpoint == "/mnt/resource") return true;
  if (v.mountpoint != "/mnt") return false;
  // cloud-init labels Azure's resource disk ephemeral0 and marks its fstab line; Windows images
  // and older agents used "Temporary Storage"
  if (b && (b->fs_label == "ephemeral0" || b->fs_label == "Temporary Storage")) return true;
  return v.fstab && (v.fstab->options.find("comment=cloudconfig") != std::string::npos ||
                     v.fstab->spec.find("azure_resource") != std::string::npos);
}

}  // namespace

Result<Machine> Discover(const MachineRoot& root) {
  if (!root.env) return InvalidArgument("machine discovery needs an Env");
  Machine m;
  {
    std::string path = root.Path("/proc/self/mountinfo");
    DS_ASSIGN_OR_RETURN(std::string text, root.env->ReadFile(path, kMaxStateFile));
    auto mounts = ParseMountinfo(text);
    if (!mounts.ok()) return mounts.status().WithContext(path);
    m.mounts = std::move(mounts).value();
  }
  {
    std::string path = root.Etc("fstab");
    DS_ASSIGN_OR_RETURN(std::string text, ReadOptional(root, path));
    auto f = ParseFstab(text);
    if (!f.ok()) return f.status().WithContext(path);
    m.fstab = std::move(f).value();
  }
  {
    std::string path = root.Etc("crypttab");
    DS_ASSIGN_OR_RETURN(std::string text, ReadOptional(root, path));
    auto c = ParseCrypttab(text);
    if (!c.ok()) return c.status().WithContext(path);
    m.crypttab = std::move(c).value();
  }
  {
    DS_ASSIGN_OR_RETURN(std::string text, ReadOptional(root, root.Path("/proc/swaps")));
    bool header = true;
    Status s = ForEachLine(text, [&](int, const auto& f) -> Status {
      if (header) {  // "Filename Type Size Used Priority"
        header = false;
        if (f[0] == "Filename") return Status::Ok();
      }
      m.swaps.push_back(Unescape(f[0]));
      return Status::Ok();
    });
    DS_RETURN_IF_ERROR(s);
  }
  {
    auto names = root.env->ListDir(root.Path("/sys/class/block"));
    if (!names.ok() && names.status().code() != Code::kNotFound)
      return names.status();
    if (names.ok()) {
      std::sort(names->begin(), names->end());
      for (const auto& n : *names) {
        m.blocks.push_back(ReadBlock(root, n));
        Probe(root, m.blocks.back());
      }
    }
  }

  Resolver r(m);
  // The fstab line for a volume: the one naming its device (any spelling) at this mount point,
  // else the one for the mount point, else any naming the device (a swap line).
  auto fstab_for = [&](int block, const std::string& mountpoint) -> std::optional<FstabEntry> {
    const FstabEntry* by_point = nullptr;
    const FstabEntry* by_device = nullptr;
    for (const auto& e : m.fstab) {
      bool device = block >= 0 && r.Find(e.spec) == block;
      bool point = !mountpoint.empty() && e.file == mountpoint;
      if (device && point) return e;
      if (point && !by_point) by_point = &e;
      if (device && !by_device) by_device = &e;
    }
    if (by_point) return *by_point;
    if (by_device) return *by_device;
    return std::nullopt;
  };
  auto crypttab_for = [&](int block) -> std::optional<CrypttabEntry> {
    if (block < 0) return std::nullopt;
    for (const auto& e : m.crypttab) {
      // the mapping itself (by dm name) or a device below it (the crypttab device field)
      bool match = AnyBelow(m, r, block, [&](const BlockInfo& b) {
        return (!b.dm_name.empty() && b.dm_name == e.name) || r.Find(e.device) == r.FindName(b.name);
      });
      if (match) return e;
    }
    return std::nullopt;
  };
  auto fill = [&](Volume& v, int block) {
    v.block = block;
    if (block < 0) return;
    const BlockInfo& b = m.blocks[size_t(block)];
    v.dev = b.dev;
    v.size_bytes = b.size_bytes;
    v.is_luks = b.signature == "luks1" || b.signature == "luks2";
    v.encrypted = v.is_luks || AnyBelow(m, r, block, IsCrypt);
    v.lvm_lv = AnyBelow(m, r, block, IsLv);
    v.lvm_pv = b.signature == "LVM2_member";
    if (dm::IsPreparedLinear(b.dm_uuid) && b.slaves.size() == 1)
      if (int below = r.FindName(b.slaves[0]); below >= 0) v.prepared_from = m.blocks[size_t(below)].dev;
    v.crypttab = crypttab_for(block);
  };

  std::set<int> used;
  std::set<std::string> seen_sources;
  for (const auto& mt : m.mounts) {
    int block = r.FindDevno(mt.major, mt.minor);
    if (block < 0 && mt.source.rfind("/dev/", 0) == 0) block = r.Find(mt.source);  // btrfs: 0:NN
    if (block < 0 && mt.source.rfind("/dev/", 0) != 0) continue;  // tmpfs, proc, overlay, ...
    std::string key = block >= 0 ? "#" + std::to_string(block) : mt.source;
    // One volume per device: its first mount of the filesystem's root (bind mounts come later)
    if (seen_sources.count(key)) continue;
    if (mt.root != "/" && mt.root != "") {
      bool later = std::any_of(m.mounts.begin(), m.mounts.end(), [&](const Mount& o) {
        return (o.major == mt.major && o.minor == mt.minor) && o.root == "/";
      });
      if (later) continue;
    }
    seen_sources.insert(key);
    Volume v;
    v.dev = mt.source;
    v.mountpoint = mt.mountpoint;
    v.fstype = mt.fstype;
    v.mount_options = mt.options;
    fill(v, block);
    if (block < 0) v.dev = mt.source;
    v.fstab = fstab_for(block, mt.mountpoint);
    const BlockInfo* b = block >= 0 ? &m.blocks[size_t(block)] : nullptr;
    if (mt.mountpoint == "/") v.role = VolumeRole::kOs;
    else if (mt.mountpoint == "/boot" || mt.mountpoint == "/boot/efi") v.role = VolumeRole::kBoot;
    else if (IsResourceHint(v, b)) v.role = VolumeRole::kResource;
    else v.role = VolumeRole::kData;
    if (block >= 0) used.insert(block);
    m.volumes.push_back(std::move(v));
  }
  for (const auto& s : m.swaps) {
    int block = r.Find(s);
    if (block < 0 || used.count(block)) continue;  // a swap file is not a volume
    Volume v;
    v.role = VolumeRole::kSwap;
    v.fstype = "swap";
    fill(v, block);
    v.fstab = fstab_for(block, "");
    used.insert(block);
    m.volumes.push_back(std::move(v));
  }
  // Unmounted devices with something on them: LUKS volumes, filesystems, PVs not in use.
  std::set<std::string> parents;
  for (const auto& b : m.blocks)
    if (b.partition) parents.insert(b.parent);
  for (size_t i = 0; i < m.blocks.size(); ++i) {
    const BlockInfo& b = m.blocks[i];
    if (used.count(int(i)) || b.signature.empty() || !b.holders.empty() || parents.count(b.name))
      continue;
    Volume v;
    v.role = VolumeRole::kOther;
    v.fstype = b.signature;
    fill(v, int(i));
    v.fstab = fstab_for(int(i), "");
    m.volumes.push_back(std::move(v));
  }
  std::stable_sort(m.volumes.begin(), m.volumes.end(), [](const Volume& a, const Volume& b) {
    if (a.role != b.role) return int(a.role) < int(b.role);
    if (a.mountpoint != b.mountpoint) return a.mountpoint < b.mountpoint;
    return a.dev < b.dev;
  });
  return m;
}

bool BuiltOn(const Machine& m, const Volume& v, const std::string& dm_name) {
  Resolver r(m);
  return AnyBelow(m, r, v.block, [&](const BlockInfo& b) { return !b.dm_name.empty() && b.dm_name == dm_name; });
}

Result<std::string> LvmPhysicalDevice(const Machine& m, const Volume& v) {
  if (!v.lvm_lv || v.block < 0) return Unsupported(v.dev + ": not on an LVM logical volume");
  Resolver r(m);
  std::set<int> leaves;
  std::string odd;
  // Down the slaves: LVM's own devices (the LV, its sub-LVs) until the first that is not LVM's.
  std::function<void(int, int)> walk = [&](int i, int depth) {
    if (i < 0 || depth > 16) return;
    const BlockInfo& b = m.blocks[size_t(i)];
    if (IsLv(b) && !b.slaves.empty()) {
      for (const auto& s : b.slaves) walk(r.FindName(s), depth + 1);
      return;
    }
    if (!b.dm_uuid.empty() || b.name.rfind("md", 0) == 0) odd = b.dev;
    leaves.insert(i);
  };
  walk(v.block, 0);
  if (!odd.empty())
    return Unsupported(v.dev + ": its logical volume sits on " + odd +
                       " (device-mapper or md below LVM): only a plain partition or disk as the physical volume is supported");
  if (leaves.size() != 1) {
    std::string names;
    for (int i : leaves) names += (names.empty() ? "" : ", ") + m.blocks[size_t(i)].dev;
    return Unsupported(v.dev + ": its logical volume spans " + std::to_string(leaves.size()) + " physical volumes (" +
                       names + "): only one can be encrypted under it");
  }
  return m.blocks[size_t(*leaves.begin())].dev;
}

}  // namespace ds::machine
