#include "cli/claim.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "engine/binding.h"
#include "fuse/online_control.h"
#include "luks2/header_io.h"
#include "online/dm_online.h"

namespace ds::cli {

std::string ActiveMappingOf(Env& env, const DeviceArgs& d) {
  // No detached header: the device's own (a volume cryptsetup or `format` made, opened by either).
  const std::string& from = d.header.empty() ? d.device : d.header;
  if (from.empty() || !env.Exists(from)) return "";
  auto h = env.Open(from, OpenOptions{});
  if (!h.ok()) return "";
  auto read = luks2::ReadHeader(**h);
  if (!read.ok()) return "";
  auto name = online::ActiveMapping(read->md.uuid, d.device);
  return name.ok() && *name ? **name : "";
}

Result<std::vector<DeviceClaim>> ClaimVolume(Env& env, const DeviceArgs& d, ClaimMode mode,
                                             bool writes_device, bool online_ok,
                                             const std::string* run_dir) {
  std::vector<DeviceClaim> held;
  if (online_ok && run_dir) {
    fuse::RunDir run(env, *run_dir);
    auto served = fuse::ServingDaemon(run, d.device, d.header);
    if (served.ok() && *served) return held;
  }
  ClaimOptions co{mode, writes_device, {}};
  if (online_ok) {
    if (std::string name = ActiveMappingOf(env, d); !name.empty())
      co.allowed_holders = online::MappingHolders(name);
  }
  DS_ASSIGN_OR_RETURN(DeviceClaim dev, DeviceClaim::Acquire(d.device, co));
  held.push_back(std::move(dev));
  if (!d.header.empty() && env.Exists(d.header)) {
    DS_ASSIGN_OR_RETURN(DeviceClaim hdr, DeviceClaim::Acquire(d.header, {mode, false, {}}));
    held.push_back(std::move(hdr));
  }
  return held;
}

Status CheckCryptsetupReencrypt(const luks2::Metadata& md, const std::string& device) {
  // Held from cryptsetup's start (before the header shows any operation) to its end. Only a
  // lock probe: nothing is read or written through this descriptor.
  const std::string lock = "/run/cryptsetup/LN_LUKS2-reencryption-" + md.uuid;
  const int fd = ::open(lock.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return Status::Ok();  // no lock file: cryptsetup is not running on it
  const bool held = ::flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);
  if (held)
    return Busy(device + ": cryptsetup reencrypt is working on it now (it holds " + lock +
                "); wait until it finishes, or stop it and then run `diskseal resume`");
  return Status::Ok();
}

bool IsBlockDevice(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISBLK(st.st_mode);
}

Result<bool> HeaderDeviceIsNew(Env& env, const std::string& header, bool force) {
  DS_ASSIGN_OR_RETURN(auto d, env.Open(header, OpenOptions{}));
  DS_ASSIGN_OR_RETURN(std::optional<engine::Signature> sig, engine::ProbeStart(*d));
  if (!sig) return true;
  if (sig->type == "luks2" || sig->type == "luks1") return false;
  if (force) return true;
  return InvalidArgument(header + ": the header device holds a '" + sig->type +
                         "' signature; refusing to write a header over it (use --force if it is not needed)");
}

}  // namespace ds::cli
