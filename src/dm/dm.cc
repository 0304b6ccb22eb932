#include "dm/dm.h"

#include <libdevmapper.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <memory>
#include <mutex>

#include <openssl/crypto.h>

#include "crypto/crypto.h"

namespace ds::dm {

namespace {

// libdevmapper reports through a global log function; keep the last error of this thread so it
// can go into the Status instead of onto stderr.
thread_local std::string g_last_error;
thread_local int g_last_errno = 0;

void DmLog(int level, const char*, int, int dm_errno, const char* f, ...) {
  if (level > 3) return;  // 3 = _LOG_ERR; warnings, notices and debug are not errors
  g_last_errno = dm_errno;
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  g_last_error = buf;
}

void InitLibrary() {
  static std::once_flag once;
  std::call_once(once, [] { dm_log_with_errno_init(DmLog); });
}

struct TaskDeleter {
  void operator()(dm_task* t) const { dm_task_destroy(t); }
};
using Task = std::unique_ptr<dm_task, TaskDeleter>;

Result<Task> NewTask(int type, const std::string& name) {
  InitLibrary();
  Task t(dm_task_create(type));
  if (!t) return Internal("device-mapper: cannot create a task");
  if (!name.empty() && !dm_task_set_name(t.get(), name.c_str()))
    return InvalidArgument("device-mapper: invalid name '" + name + "'");
  return t;
}

Status RunError(dm_task* t, const std::string& what) {
  // CREATE with a table runs inner tasks; their errno reaches us only through the log.
  int e = dm_task_get_errno(t);
  if (e == 0) e = g_last_errno;
  std::string detail = g_last_error.empty() ? std::strerror(e) : g_last_error;
  switch (e) {
    case EBUSY: return Busy(what + ": in use (" + detail + ")");
    case ENXIO:
    case ENODEV: return NotFound(what + ": no such mapping");
    case EINVAL: return InvalidArgument(what + ": the kernel refused the table (" + detail +
                                        "; see dmesg)");
    case EACCES:
    case EPERM: return PermissionDenied(what + ": " + detail + " (device-mapper needs root)");
    default: return IOError(what + ": " + detail);
  }
}

bool ValidSectorSize(uint32_t s) { return s >= 512 && s <= 4096 && (s & (s - 1)) == 0; }

}  // namespace

std::string MakeUuid(const std::string& luks_uuid, const std::string& name) {
  std::string hex;
  for (char c : luks_uuid)
    if (c != '-') hex.push_back(c);
  return "CRYPT-LUKS2-" + hex + "-" + name;
}

Result<SecureBuffer> TargetParams(const Segment& seg, const std::string& device_majmin,
                                  const std::string& flush_majmin) {
  const std::span<const uint8_t> key = seg.key;
  std::string tail = " " + device_majmin + " " + std::to_string(seg.device_sector);
  if (seg.type == Segment::Type::kError) return SecureBuffer(1);  // "": no parameters
  if (seg.type == Segment::Type::kLinear || seg.type == Segment::Type::kSplitFlush) {
    // Key-less: an ordinary string is fine.
    const std::string at = device_majmin + " " + std::to_string(seg.device_sector);
    std::string s = at;
    if (seg.type == Segment::Type::kSplitFlush) {
      if (flush_majmin.empty()) return InvalidArgument("split-flush segment without a flush device");
      // dm-delay: read, write and flush class, each "<dev> <offset> <delay ms>".
      s = at + " 0 " + at + " 0 " + flush_majmin + " " + std::to_string(seg.device_sector) + " 0";
    }
    SecureBuffer out(s.size() + 1);
    std::memcpy(out.data(), s.c_str(), s.size() + 1);
    return out;
  }
  if (key.empty()) return InvalidArgument("crypt segment without a key");
  std::string head = seg.cipher + " ";
  std::string mid = " " + std::to_string(seg.iv_offset) + tail;
  if (seg.sector_size != 512) mid += " 1 sector_size:" + std::to_string(seg.sector_size);
  // Assemble directly into locked memory: the hex key never lives in an ordinary string.
  SecureBuffer out(head.size() + key.size() * 2 + mid.size() + 1);
  uint8_t* p = out.data();
  std::memcpy(p, head.data(), head.size());
  p += head.size();
  static const char kHex[] = "0123456789abcdef";
  for (uint8_t b : key) {
    *p++ = uint8_t(kHex[b >> 4]);
    *p++ = uint8_t(kHex[b & 15]);
  }
  std::memcpy(p, mid.c_str(), mid.size() + 1);
  return out;
}

Status Validate(const Activation& a) {
  if (a.name.empty() || a.name.size() > 127 || a.name.find('/') != std::string::npos)
    return InvalidArgument("mapping name '" + a.name + "' is not valid");
  if (a.segments.empty()) return InvalidArgument(a.name + ": no data segments to map");
  for (size_t i = 0; i < a.segments.size(); ++i) {
    const Segment& s = a.segments[i];
    std::string what = a.name + ": segment " + std::to_string(i);
    if (s.sectors == 0) return InvalidArgument(what + " is empty");
    if (s.type == Segment::Type::kSplitFlush && s.device.empty())
      return InvalidArgument(what + ": a split-flush segment needs its own device for reads and writes");
    if (s.type == Segment::Type::kCrypt) {
      if (s.key.empty()) return InvalidArgument(what + " is encrypted but no key was given");
      DS_RETURN_IF_ERROR(CheckCipherSpec(s.cipher, s.key.size()).WithContext(what));
      if (!ValidSectorSize(s.sector_size))
        return InvalidArgument(what + ": sector size " + std::to_string(s.sector_size) +
                               " is not a power of two in 512..4096");
      if ((s.sectors * 512) % s.sector_size != 0)
        return InvalidArgument(what + ": length is not a multiple of the sector size");
    }
  }
  return Status::Ok();
}

bool Available() {
  if (::access("/dev/mapper/control", R_OK | W_OK) != 0) return false;
  InitLibrary();
  char v[64];
  return dm_driver_version(v, sizeof v) != 0;
}

namespace {

Result<std::string> MajMin(const std::string& device) {
  struct stat st;
  if (::stat(device.c_str(), &st) != 0) return PosixError(device, errno);
  if (!S_ISBLK(st.st_mode))
    return InvalidArgument(device + ": not a block device (device-mapper maps block devices)");
  return std::to_string(major(st.st_rdev)) + ":" + std::to_string(minor(st.st_rdev));
}

// Adds a's segments to t as its table, in locked memory.
Status AddTable(dm_task* t, const Activation& a) {
  DS_ASSIGN_OR_RETURN(std::string majmin, MajMin(a.device));
  // The kernel wipes the ioctl buffer holding the table; libdevmapper wipes its copies.
  if (!dm_task_secure_data(t)) return Internal("device-mapper: secure data flag refused");
  if (a.read_only && !dm_task_set_ro(t)) return Internal("device-mapper: read-only refused");
  uint64_t start = 0;
  for (const Segment& s : a.segments) {
    std::string mm = majmin;
    if (!s.device.empty()) {
      DS_ASSIGN_OR_RETURN(mm, MajMin(s.device));
    }
    DS_ASSIGN_OR_RETURN(SecureBuffer params, TargetParams(s, mm, majmin));
    const char* type = s.type == Segment::Type::kCrypt        ? "crypt"
                       : s.type == Segment::Type::kError      ? "error"
                       : s.type == Segment::Type::kSplitFlush ? "delay"
                                                              : "linear";
    if (!dm_task_add_target(t, start, s.sectors, type, reinterpret_cast<const char*>(params.data())))
      return Internal(a.name + ": cannot add a " + type + " target");
    start += s.sectors;
  }
  return Status::Ok();
}

uint16_t UdevFlags(bool private_device) {
  return private_device ? uint16_t(DM_UDEV_DISABLE_DM_RULES_FLAG | DM_UDEV_DISABLE_SUBSYSTEM_RULES_FLAG |
                                   DM_UDEV_DISABLE_DISK_RULES_FLAG | DM_UDEV_DISABLE_OTHER_RULES_FLAG)
                        : uint16_t(0);
}

// Runs t with a udev cookie, which is returned in `cookie` for the caller to wait for (a failed
// task's cookie is completed by libdevmapper: waiting for it returns at once).
Status RunSettingCookie(dm_task* t, const std::string& what, bool private_device, uint32_t& cookie) {
  cookie = 0;
  if (!dm_task_set_cookie(t, &cookie, UdevFlags(private_device)))
    return Internal(what + ": cannot set up udev synchronisation");
  g_last_error.clear();
  g_last_errno = 0;
  int ok = dm_task_run(t);
  return ok ? Status::Ok() : RunError(t, what);
}

// Runs t, waiting for udev (or the node operations libdevmapper queued where udev does not run).
Status RunWithCookie(dm_task* t, const std::string& what, bool private_device) {
  uint32_t cookie = 0;
  Status s = RunSettingCookie(t, what, private_device, cookie);
  // Also with cookie 0 (no udev): libdevmapper makes the queued /dev/mapper nodes here.
  dm_udev_wait(cookie);
  return s;
}

}  // namespace

Status Create(const Activation& a) {
  DS_RETURN_IF_ERROR(Validate(a));
  if (!Available())
    return Unsupported("device-mapper is not available in this kernel (no /dev/mapper/control); "
                       "use --userspace");
  DS_RETURN_IF_ERROR(MajMin(a.device).status());
  // libdevmapper creates and loads through inner tasks whose errno does not reach us: look first,
  // so a taken name is reported as such (a race with another creator still fails, as kIOError).
  DS_ASSIGN_OR_RETURN(auto existing, Find(a.name));
  if (existing)
    return Busy(a.name + ": /dev/mapper/" + a.name + " already exists (name in use)");
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_CREATE, a.name));
  const std::string uuid = a.dm_uuid.empty() ? MakeUuid(a.luks_uuid, a.name) : a.dm_uuid;
  if (!dm_task_set_uuid(t.get(), uuid.c_str()))
    return InvalidArgument(a.name + ": invalid dm uuid " + uuid);
  DS_RETURN_IF_ERROR(AddTable(t.get(), a));
  return RunWithCookie(t.get(), a.name, a.private_device);
}

Status Reload(const Activation& a) {
  DS_RETURN_IF_ERROR(Validate(a));
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_RELOAD, a.name));
  DS_RETURN_IF_ERROR(AddTable(t.get(), a));
  g_last_error.clear();
  g_last_errno = 0;
  if (!dm_task_run(t.get())) return RunError(t.get(), a.name + ": loading a table");
  return Status::Ok();
}

Status Suspend(const std::string& name) {
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_SUSPEND, name));
  // No filesystem freeze (it would write the filesystem's dirty data into a device being
  // switched, and freeze the root filesystem of the machine we run on) and no flush of queued
  // I/O: the kernel still waits for the I/O in flight, which is what the switch needs.
  if (!dm_task_skip_lockfs(t.get()) || !dm_task_no_flush(t.get()))
    return Internal(name + ": cannot set suspend flags");
  g_last_error.clear();
  g_last_errno = 0;
  if (!dm_task_run(t.get())) return RunError(t.get(), name + ": suspend");
  return Status::Ok();
}

Status Resume(const std::string& name, bool private_device) {
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_RESUME, name));
  return RunWithCookie(t.get(), name + ": resume", private_device);
}

Status ResumeNoWait(const std::string& name, std::optional<uint32_t>& cookie) {
  WaitUdev(cookie);
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_RESUME, name));
  uint32_t c = 0;
  Status s = RunSettingCookie(t.get(), name + ": resume", false, c);
  cookie = c;
  if (!s.ok()) WaitUdev(cookie);  // completed by libdevmapper on failure: returns at once
  return s;
}

void WaitUdev(std::optional<uint32_t>& cookie) {
  if (cookie) dm_udev_wait(*cookie);  // each cookie once: the wait releases its semaphore
  cookie.reset();
}

Result<std::vector<TargetInfo>> LiveTargets(const std::string& name) {
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_TABLE, name));
  if (!dm_task_secure_data(t.get())) return Internal("device-mapper: secure data flag refused");
  g_last_error.clear();
  g_last_errno = 0;
  if (!dm_task_run(t.get())) return RunError(t.get(), name + ": reading the table");
  std::vector<TargetInfo> out;
  void* next = nullptr;
  do {
    uint64_t start = 0, length = 0;
    char* type = nullptr;
    char* params = nullptr;
    next = dm_get_next_target(t.get(), next, &start, &length, &type, &params);
    if (!type) break;
    TargetInfo ti;
    ti.start = start;
    ti.sectors = length;
    ti.type = type;
    if (params) {
      ParseTargetDevice(params, ti);
      // The parameters hold the key for crypt targets: wipe them before the task is freed.
      OPENSSL_cleanse(params, std::strlen(params));
    }
    out.push_back(std::move(ti));
  } while (next);
  return out;
}

Result<std::string> Message(const std::string& name, const std::string& message) {
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_TARGET_MSG, name));
  if (!dm_task_set_sector(t.get(), 0) || !dm_task_set_message(t.get(), message.c_str()))
    return Internal(name + ": cannot set up a device-mapper message");
  g_last_error.clear();
  g_last_errno = 0;
  if (!dm_task_run(t.get())) return RunError(t.get(), name + ": message '" + message + "'");
  const char* reply = dm_task_get_message_response(t.get());
  return std::string(reply ? reply : "");
}

Status Remove(const std::string& name) {
  if (!Available()) return Unsupported("device-mapper is not available in this kernel");
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_REMOVE, name));
  uint32_t cookie = 0;
  if (!dm_task_set_cookie(t.get(), &cookie, 0))
    return Internal(name + ": cannot set up udev synchronisation");
  g_last_error.clear();
  g_last_errno = 0;
  int ok = dm_task_run(t.get());
  Status s = ok ? Status::Ok() : RunError(t.get(), name);
  dm_udev_wait(cookie);
  if (s.code() == Code::kBusy)
    return Busy(name + ": /dev/mapper/" + name + " is in use (mounted or held open); "
                "unmount it first");
  return s;
}

bool IsStale(const MappingInfo& m) {
  return !m.live_table || (m.suspended && m.target_types.empty());
}

bool IsLuks2(const MappingInfo& m) { return m.uuid.rfind("CRYPT-LUKS2-", 0) == 0; }

bool IsPreparedLinear(const std::string& dm_uuid) { return dm_uuid.rfind(kPreparedLinearUuidPrefix, 0) == 0; }

void ParseTargetDevice(std::string_view p, TargetInfo& t) {
  // crypt: "<cipher> <key> <iv_offset> <maj:min> <offset> ..."; linear: "<maj:min> <offset>".
  const size_t field = t.type == "crypt" ? 3 : t.type == "linear" ? 0 : size_t(-1);
  if (field == size_t(-1)) return;
  size_t i = 0, at = 0;
  unsigned ma = 0, mi = 0;
  bool have_dev = false;
  while (at < p.size()) {
    size_t end = p.find(' ', at);
    if (end == std::string_view::npos) end = p.size();
    // Copied only for the two fields read (never the key field).
    if (i == field) {
      have_dev = std::sscanf(std::string(p.substr(at, end - at)).c_str(), "%u:%u", &ma, &mi) == 2;
      if (have_dev) t.device = makedev(ma, mi);
    } else if (i == field + 1) {
      unsigned long long off = 0;
      if (have_dev && std::sscanf(std::string(p.substr(at, end - at)).c_str(), "%llu", &off) == 1) t.device_sector = off;
      return;
    }
    ++i;
    at = end + 1;
  }
}

Result<std::optional<MappingInfo>> Find(const std::string& name) {
  if (!Available()) return std::optional<MappingInfo>();
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_INFO, name));
  if (!dm_task_run(t.get())) return RunError(t.get(), name);
  dm_info info{};
  if (!dm_task_get_info(t.get(), &info)) return Internal(name + ": no info from device-mapper");
  if (!info.exists) return std::optional<MappingInfo>();
  MappingInfo m;
  m.name = name;
  m.dev = makedev(unsigned(info.major), unsigned(info.minor));
  if (const char* u = dm_task_get_uuid(t.get())) m.uuid = u;
  m.live_table = info.live_table != 0;
  m.suspended = info.suspended != 0;
  m.open_count = info.open_count;
  m.read_only = info.read_only != 0;

  DS_ASSIGN_OR_RETURN(Task dt, NewTask(DM_DEVICE_DEPS, name));
  if (dm_task_run(dt.get())) {
    if (dm_deps* deps = dm_task_get_deps(dt.get()))
      for (uint32_t i = 0; i < deps->count; ++i) {
        // The kernel's 32-bit encoding (huge_encode_dev), not glibc's dev_t layout.
        uint64_t d = deps->device[i];
        m.deps.push_back(makedev(unsigned((d >> 8) & 0xfff),
                                 unsigned((d & 0xff) | ((d >> 12) & 0xfff00))));
      }
  }
  if (m.live_table) {
    // STATUS, not TABLE: a crypt table would carry the key into this process.
    DS_ASSIGN_OR_RETURN(Task s, NewTask(DM_DEVICE_STATUS, name));
    if (dm_task_run(s.get())) {
      void* next = nullptr;
      do {
        uint64_t start = 0, length = 0;
        char* type = nullptr;
        char* params = nullptr;
        next = dm_get_next_target(s.get(), next, &start, &length, &type, &params);
        if (type) m.target_types.emplace_back(type);
      } while (next);
    }
  }
  return std::optional<MappingInfo>(std::move(m));
}

Result<std::vector<MappingInfo>> List() {
  std::vector<MappingInfo> out;
  if (!Available()) return out;
  DS_ASSIGN_OR_RETURN(Task t, NewTask(DM_DEVICE_LIST, ""));
  if (!dm_task_run(t.get())) return RunError(t.get(), "device-mapper list");
  std::vector<std::string> names;
  dm_names* n = dm_task_get_names(t.get());
  if (n && n->dev) {
    for (;;) {
      names.emplace_back(n->name);
      if (!n->next) break;
      n = reinterpret_cast<dm_names*>(reinterpret_cast<char*>(n) + n->next);
    }
  }
  for (const auto& name : names) {
    auto m = Find(name);
    if (!m.ok()) return m.status();
    if (m->has_value()) out.push_back(std::move(**m));  // removed meanwhile: skip
  }
  std::sort(out.begin(), out.end(),
            [](const MappingInfo& a, const MappingInfo& b) { return a.name < b.name; });
  return out;
}

Result<std::vector<MappingInfo>> Holders(dev_t dev) {
  DS_ASSIGN_OR_RETURN(auto all, List());
  std::vector<MappingInfo> out;
  for (auto& m : all)
    if (std::find(m.deps.begin(), m.deps.end(), dev) != m.deps.end()) out.push_back(std::move(m));
  return out;
}

}  // namespace ds::dm
