#include "cli/claim.h"

#include "fuse/online_control.h"
#include "luks2/header_io.h"
#include "online/dm_online.h"

namespace ds::cli {

std::string ActiveMappingOf(Env& env, const DeviceArgs& d) {
  if (d.header.empty() || !env.Exists(d.header)) return "";
  auto h = env.Open(d.header, OpenOptions{});
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
      co.allowed_holders = {name, online::HotzoneName(name)};
  }
  DS_ASSIGN_OR_RETURN(DeviceClaim dev, DeviceClaim::Acquire(d.device, co));
  held.push_back(std::move(dev));
  if (!d.header.empty() && env.Exists(d.header)) {
    DS_ASSIGN_OR_RETURN(DeviceClaim hdr, DeviceClaim::Acquire(d.header, {mode, false, {}}));
    held.push_back(std::move(hdr));
  }
  return held;
}

}  // namespace ds::cli
