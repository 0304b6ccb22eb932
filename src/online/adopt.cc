#include "online/adopt.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "online/dm_online.h"

namespace ds::online {

namespace {

// A small sysfs attribute, trailing newline removed; "" when absent.
std::string ReadSys(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "";
  char buf[512];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return "";
  std::string s(buf, size_t(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string SysDev(dev_t dev) {
  return "/sys/dev/block/" + std::to_string(major(dev)) + ":" + std::to_string(minor(dev));
}

bool Ours(const std::string& uuid) {
  return uuid.rfind("CRYPT-", 0) == 0 || uuid.rfind("DISKSEAL-", 0) == 0;
}

// `t` (linear targets only) as segments of an Activation: the same devices and offsets.
Result<std::vector<dm::Segment>> SegmentsOf(const std::vector<dm::TargetInfo>& t) {
  std::vector<dm::Segment> out;
  for (const auto& ti : t) {
    dm::Segment s;
    s.type = dm::Segment::Type::kLinear;
    s.sectors = ti.sectors;
    s.device_sector = ti.device_sector;
    DS_ASSIGN_OR_RETURN(s.device, DevicePath(ti.device));
    out.push_back(std::move(s));
  }
  return out;
}

// Removes NAME-dsraw; the kernel may release NAME's old table asynchronously: busy is retried, bounded.
Status RemoveRaw(const std::string& name) {
  Status s = dm::Remove(RawName(name));
  for (int i = 0; i < 100 && s.code() == Code::kBusy; ++i) {
    ::usleep(20 * 1000);
    s = dm::Remove(RawName(name));
  }
  return s;
}

}  // namespace

std::string RawName(const std::string& name) { return name + "-dsraw"; }
std::string RawPath(const std::string& name) { return "/dev/mapper/" + RawName(name); }

std::string AdoptRefusal(const dm::MappingInfo& m, const std::vector<dm::TargetInfo>& t) {
  if (m.uuid.rfind("CRYPT-", 0) == 0) return "it is a dm-crypt mapping (already encrypted)";
  if (m.uuid.rfind("DISKSEAL-", 0) == 0) return "it is a helper device of diskseal's";
  if (!m.live_table || t.empty()) return "it has no live device-mapper table";
  if (m.suspended) return "it is suspended";
  if (m.read_only) return "it is read-only";
  for (const auto& ti : t)
    if (ti.type != "linear")
      return "its table has a " + ti.type +
             " target: only linear logical volumes are encrypted without a remount (thin, snapshot, raid, mirror, "
             "cache and striped volumes are not; use --offline)";
  uint64_t at = 0;
  for (const auto& ti : t) {
    if (ti.start != at || ti.sectors == 0 || ti.device == 0) return "its table is not a contiguous list of linear targets";
    at += ti.sectors;
  }
  return "";
}

Result<std::string> DevicePath(dev_t dev) {
  const std::string uevent = ReadSys(SysDev(dev) + "/uevent");
  size_t at = uevent.find("DEVNAME=");
  if (at == std::string::npos)
    return NotFound(std::to_string(major(dev)) + ":" + std::to_string(minor(dev)) + ": no block device with this number");
  at += 8;
  const size_t end = uevent.find('\n', at);
  const std::string path = "/dev/" + uevent.substr(at, end == std::string::npos ? std::string::npos : end - at);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISBLK(st.st_mode) || st.st_rdev != dev)
    return NotFound(path + ": not the block device " + std::to_string(major(dev)) + ":" + std::to_string(minor(dev)));
  return path;
}

Result<std::optional<std::string>> ForeignMappingAt(const std::string& device) {
  if (!dm::Available()) return std::optional<std::string>();
  struct stat st;
  if (::stat(device.c_str(), &st) != 0 || !S_ISBLK(st.st_mode)) return std::optional<std::string>();
  const std::string name = ReadSys(SysDev(st.st_rdev) + "/dm/name");
  if (name.empty()) return std::optional<std::string>();
  DS_ASSIGN_OR_RETURN(auto m, dm::Find(name));
  if (!m || m->dev != st.st_rdev || Ours(m->uuid)) return std::optional<std::string>();
  return std::optional<std::string>(name);
}

Result<std::string> AdoptRefusalAt(const std::string& device) {
  DS_ASSIGN_OR_RETURN(auto name, ForeignMappingAt(device));
  if (!name) return std::string();
  DS_ASSIGN_OR_RETURN(bool adopted, Adopted(*name));
  if (adopted) return std::string();  // an earlier run's: PrepareRaw checks it
  DS_ASSIGN_OR_RETURN(auto m, dm::Find(*name));
  if (!m) return std::string();
  DS_ASSIGN_OR_RETURN(auto t, dm::LiveTargets(*name));
  return AdoptRefusal(*m, t);
}

Result<bool> Adopted(const std::string& name) {
  DS_ASSIGN_OR_RETURN(auto raw, dm::Find(RawName(name)));
  return raw.has_value();
}

Status PrepareRaw(const std::string& device, const std::string& name) {
  DS_ASSIGN_OR_RETURN(auto top, dm::Find(name));
  if (!top) return NotFound(device + ": /dev/mapper/" + name + " does not exist");
  DS_ASSIGN_OR_RETURN(auto t, dm::LiveTargets(name));
  DS_ASSIGN_OR_RETURN(auto raw, dm::Find(RawName(name)));
  if (raw) {
    DS_ASSIGN_OR_RETURN(auto rt, dm::LiveTargets(RawName(name)));
    if (rt == t) return Status::Ok();  // made by an earlier run, NAME not switched yet
    DS_ASSIGN_OR_RETURN(auto helpers, HelperDevices(name));
    for (dev_t d : top->deps)
      if (d == raw->dev || std::find(helpers.begin(), helpers.end(), d) != helpers.end())
        return Status::Ok();  // switched by an earlier run
    return Busy(device + ": " + RawPath(name) + " exists but is neither a copy of /dev/mapper/" + name +
                "'s table nor under it; remove it by hand (dmsetup remove " + RawName(name) + ") if nothing uses it");
  }
  const std::string why = AdoptRefusal(*top, t);
  if (!why.empty()) return Unsupported(device + ": cannot be encrypted without a remount: " + why);
  dm::Activation a;
  a.name = RawName(name);
  a.dm_uuid = ("DISKSEAL-RAW-" + (top->uuid.empty() ? name : top->uuid)).substr(0, 128);
  // No udev probing: it shows the same filesystem (and UUID) as NAME.
  a.private_device = true;
  a.read_only = false;
  DS_ASSIGN_OR_RETURN(a.segments, SegmentsOf(t));
  a.device = a.segments.front().device;
  return dm::Create(a);
}

Status Release(const std::string& name) {
  DS_ASSIGN_OR_RETURN(auto raw, dm::Find(RawName(name)));
  if (!raw) return Status::Ok();
  DS_ASSIGN_OR_RETURN(auto top, dm::Find(name));
  DS_ASSIGN_OR_RETURN(auto rt, dm::LiveTargets(RawName(name)));
  if (top) {
    DS_ASSIGN_OR_RETURN(auto t, dm::LiveTargets(name));
    if (t != rt) {
      uint64_t size = 0;
      for (const auto& ti : rt) size += ti.sectors;
      const bool plain = t.size() == 1 && t[0].type == "linear" && t[0].device == raw->dev &&
                         t[0].device_sector == 0 && t[0].start == 0 && t[0].sectors == size;
      if (!plain)
        return Busy("/dev/mapper/" + name + ": not the plaintext over " + RawPath(name) +
                    " yet (finish the decryption first); its original table was not put back");
      dm::Activation a;
      a.name = name;
      DS_ASSIGN_OR_RETURN(a.segments, SegmentsOf(rt));
      a.device = a.segments.front().device;
      a.read_only = top->read_only;
      DS_RETURN_IF_ERROR(dm::Reload(a));
      DS_RETURN_IF_ERROR(dm::Suspend(name));
      DS_RETURN_IF_ERROR(dm::Resume(name));
    }
  }
  return RemoveRaw(name);
}

}  // namespace ds::online
